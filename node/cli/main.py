"""The ``ainode`` command: every command group registered here, by name (as pynetdicom's
apps are). Each command module imports only typer and rich at the top; what a command needs
(pynetdicom, highdicom, torch, the job store) it imports when it runs, so ``ainode --help``
and ``ainode version`` start fast and ``ainode serve`` loads no model code in its supervisor."""

from __future__ import annotations

import typer

from node import __version__
from node.cli import config, models, operate, overview, peers, research, results, serve, transfer
from node.cli.console import console

app = typer.Typer(help="ainode: PACS-integrated AI inference node.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the version."""
    console.print(__version__)


app.command()(serve.serve)
app.command("echo")(transfer.echo_command)
app.command()(transfer.send)
app.command()(overview.status)
app.command()(overview.audit)
app.command()(overview.conformance)
app.command("run")(transfer.run_studies)
app.command("export")(research.export_studies)
app.command()(research.reidentify)
app.command()(operate.cancel)
app.command()(operate.complete)
app.add_typer(config.app, name="config")
app.add_typer(models.app, name="models")
app.add_typer(operate.requeue_app, name="requeue")
app.add_typer(peers.app, name="peers")
app.add_typer(results.app, name="results")
app.command("replay")(results.replay_command)
