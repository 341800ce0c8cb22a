"""``python -m node``: the ``ainode`` command (how the supervisor starts its role processes)."""

from node.cli import app

app()
