"""The ``ainode`` command line: one module per command group (:mod:`node.cli.main` registers
them), what they share in :mod:`node.cli.console`. Operator actions go through
:mod:`node.operations.actions`, as the admin API's and the dashboard's do."""

from node.cli.main import app

__all__ = ["app"]
