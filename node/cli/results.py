"""``ainode results``: AI results once they are in the PACS. ``withdraw`` takes wrong results
back (IHE IOCM rejection notes, audited with the OS account); ``list`` shows what was
withdrawn and whom it was told to."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from node.cli.console import ConfigOption, console, fail, load, open_existing_store, row, when
from node.cli.operate import _with_actions

if TYPE_CHECKING:
    from node.operations.actions import Actions, Operator

app = typer.Typer(help="AI results in the PACS: withdraw wrong ones (IHE IOCM), list "
                       "withdrawals.", no_args_is_help=True)


@app.command("withdraw")
def withdraw(
    jobs: Annotated[list[int], typer.Argument(help="Job ids (`ainode status`).")],
    reason: Annotated[str, typer.Option(
        "--reason", help="Why (kept, sent in the note's description, never logged).")],
    config: ConfigOption = None,
) -> None:
    """Withdraw jobs' results as wrong: each destination that received them and has
    ``iocm: true`` gets a rejection note ("Rejected for Patient Safety Reasons"); results not
    sent yet are not sent."""
    for job in jobs:
        _with_actions(config, functools.partial(_withdraw, job, reason))
        console.print(f"job {job}: results withdrawn; the rejection notes go with the outbox")


def _withdraw(job: int, reason: str, actions: Actions, who: Operator) -> None:
    actions.withdraw_result(job, reason, who)


@app.command("assess")
def assess(
    job: Annotated[int, typer.Argument(help="A job id (`ainode status`).")],
    verdict: Annotated[str, typer.Argument(help="accept, reject or modify.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (optional).")] = "",
    config: ConfigOption = None,
) -> None:
    """Record the radiologist's verdict on a job's results (reported per model version as
    the acceptance rate, and in /metrics)."""
    _with_actions(config, functools.partial(_assess, job, verdict, reason))
    console.print(f"job {job}: {verdict} recorded")


def _assess(job: int, verdict: str, reason: str, actions: Actions, who: Operator) -> None:
    actions.assess_result(job, verdict, reason, who, "cli")


@app.command("list")
def list_withdrawn(config: ConfigOption = None) -> None:
    """Withdrawn results, newest first: why, by whom, and which destinations were told."""
    from node.store.rejections import Rejections

    store = open_existing_store(load(config))
    try:
        rows = Rejections(store).listing()
    finally:
        store.close()
    listing = Table("job", "when", "reason", "by", "state", "told", title="withdrawn results")
    for rejection in rows:
        row(listing, rejection.job_id, when(rejection.created_at), rejection.reason,
            rejection.actor, rejection.state, rejection.detail)
    console.print(listing)


def replay_command(
    job: Annotated[int, typer.Argument(help="A finished job (`ainode status`).")],
    config: ConfigOption = None,
) -> None:
    """Run a job again from its spooled instances with the model version it recorded, and say
    whether every output object is identical (pixel data and content; UIDs and times aside).
    Exit 0: identical; 1: different, or it cannot be replayed as recorded."""
    from node.jobs.workers import make_backend
    from node.operations.replay import ReplayRefused, replay

    settings = load(config)
    store = open_existing_store(settings)
    backend = make_backend(settings)
    try:
        report = replay(settings, store, job, backend)
    except ReplayRefused as exc:
        fail(str(exc))
    finally:
        backend.close()
        store.close()
    table = Table("object", "identical", "differs in", title=f"replay of job {job}: "
                  f"{report.model} {report.version}")
    for kind, found in report.compared.items():
        row(table, kind.upper(), "yes" if not found else "no", ", ".join(found[:8]) or "-")
    if report.labels_identical is not None:
        row(table, "label map", "yes" if report.labels_identical else "no", "-")
    console.print(table)
    if not report.identical:
        fail(f"job {job}: the replay differs from what was delivered")
    console.print(f"job {job}: every output object is identical")
