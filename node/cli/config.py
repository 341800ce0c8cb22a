"""``ainode config``: validate a configuration file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from node.cli.console import console, errors, load, require_codes

app = typer.Typer(help="Configuration commands.", no_args_is_help=True)


@app.command("check")
def config_check(
    file: Annotated[Path, typer.Argument(help="Configuration file to validate.")],
) -> None:
    """Validate a configuration file and print the effective configuration."""
    from node.settings import dump_settings

    settings = load(file)
    console.print(dump_settings(settings), highlight=False, markup=False)
    require_codes(settings, str(file))
    errors.print(f"{file}: valid")
