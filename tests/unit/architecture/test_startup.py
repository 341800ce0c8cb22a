"""``ainode --help`` and ``ainode version`` load the command line and nothing else: every
command imports what it needs when it runs (issue 25; the wall time is bench/cli.py's)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from node import __version__

PROBE = """
import sys
from node.cli import app
print(" ".join(sorted({m.split(".")[0] for m in sys.modules if not m.startswith("_")}
                       - set(sys.stdlib_module_names))))
"""


def test_the_command_line_loads_only_typer_and_rich() -> None:
    loaded = set(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                check=True).stdout.split())
    assert "node" in loaded
    assert loaded - {"node", "typer", "rich", "click", "shellingham", "annotated_doc",
                     "typing_extensions", "markdown_it", "mdurl", "pygments"} == set()


@pytest.mark.parametrize("arguments", [["version"], ["--help"], ["requeue", "--help"],
                                       ["peers", "--help"], ["models", "--help"]])
def test_help_and_version_answer(arguments: list[str]) -> None:
    from node.cli import app

    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert (__version__ in result.output) if arguments == ["version"] else "Usage" in result.output
