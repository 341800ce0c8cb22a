"""What every command shares: the consoles (credentials masked, control characters escaped),
the ``--config`` option, the settings and the job store opened with a clear exit, and who the
operator is. Imports nothing heavy: ``ainode --help`` loads this for every command."""

from __future__ import annotations

import datetime as dt
import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from node.runtime import logs

if TYPE_CHECKING:
    from node.operations.actions import ActionRefused, Operator
    from node.settings import Peer, Settings
    from node.store.jobs import JobStore


class _MaskingConsole(Console):
    """A console that never prints a URL's credentials (:func:`logs.mask_credentials`)."""

    def print(self, *objects: Any, **options: Any) -> None:
        super().print(*(logs.mask_credentials(o) if isinstance(o, str) else o
                        for o in objects), **options)


# Wide when piped (logs, scripts), so UIDs in tables are never cut.
console = _MaskingConsole() if sys.stdout.isatty() else _MaskingConsole(width=220)
errors = _MaskingConsole(stderr=True)

DEFAULT_CONFIG = Path("config/node.yaml")
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: config/node.yaml if present)."),
]
IdsArgument = Annotated[list[int] | None, typer.Argument(help="Ids from `ainode status`.")]
AllOption = Annotated[bool, typer.Option("--all", help="Every one in that state.")]

USAGE, FAILED = 2, 1  # exit statuses: the command was wrong; the work failed


def fail(message: str, status: int = FAILED) -> NoReturn:
    """Print ``message`` (plain text, never markup) on stderr, red, and exit."""
    errors.print(Text(message, style="red"))
    raise typer.Exit(status)


def refused(exc: ActionRefused) -> NoReturn:
    """An operator action refused: a peer's failure exits 1, the rest (nothing there, wrong
    state) too, as the command could not do what was asked."""
    fail(str(exc), FAILED)


def load(path: Path | None) -> Settings:
    from node.settings import ConfigError, load_settings

    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    try:
        return load_settings(path)
    except ConfigError as exc:
        fail(str(exc), USAGE)


def open_existing_store(settings: Settings) -> JobStore:
    from node.store.database import SchemaTooNew, StoreUnavailable
    from node.store.layout import open_store, store_exists

    if not store_exists(settings):
        fail(f"no job store under {settings.node.data_dir}: has the node run yet?")
    try:
        return open_store(settings)
    except (SchemaTooNew, StoreUnavailable) as exc:
        fail(str(exc))


def open_or_create_store(settings: Settings) -> JobStore:
    from node.store.layout import open_store, store_exists

    if store_exists(settings):
        return open_existing_store(settings)
    settings.node.data_dir.mkdir(parents=True, exist_ok=True)
    return open_store(settings)


def peer_named(settings: Settings, name: str) -> Peer:
    try:
        return settings.peer(name)
    except KeyError as exc:
        fail(str(exc.args[0]), USAGE)


def operator() -> Operator:
    """Who ran a command, for the audit trail: the OS account."""
    from node.operations.actions import Operator

    try:
        return Operator(getpass.getuser())
    except (KeyError, OSError):
        return Operator(f"uid {os.getuid()}")


def when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def row(table: Table, *values: object) -> None:
    """A table row whose cells are shown as text: control characters escaped (a name cannot
    move the cursor or fake a line), no rich markup, credentials in URLs masked."""
    table.add_row(*(value if isinstance(value, Text) else
                    Text(logs.printable(logs.mask_credentials(str(value))))
                    for value in values))


def require_codes(settings: Settings, source: str) -> None:
    """Refuse a configuration whose results could not be encoded (exit 2, naming each)."""
    from node.infer.segments import missing_codes

    problems = missing_codes(settings)
    if problems:
        errors.print(Text(f"invalid configuration in {source}:", style="red"))
        for problem in problems:
            errors.print(f"  {problem}", highlight=False, markup=False)
        raise typer.Exit(USAGE)
