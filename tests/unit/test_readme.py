"""The README's CLI block is a contract: every command it lists exists with those words."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from node.cli import app

README = Path(__file__).resolve().parents[2] / "README.md"


def _cli_block() -> list[list[str]]:
    text = README.read_text()
    block = text.split("## CLI", 1)[1].split("```", 2)[1]
    commands = []
    for line in block.splitlines():
        match = re.match(r"ainode ((?:[a-z]+ ?)+)", line.strip())
        if match:
            commands.append(match.group(1).split())
    return commands


def test_every_command_in_the_readme_exists() -> None:
    commands = _cli_block()
    assert ["requeue", "jobs"] in [c[:2] for c in commands]
    for words in commands:  # the lower-case words: "requeue jobs", "config check", "send"
        result = CliRunner().invoke(app, [*words, "--help"])
        assert result.exit_code == 0, f"README lists `ainode {' '.join(words)}`: {result.output}"
        assert "Usage: " in result.output and " ".join(words) in result.output
