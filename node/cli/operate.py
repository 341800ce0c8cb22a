"""An operator's hand on the node's work, as the dashboard and the admin API have it (one
meaning, :mod:`node.operations.actions`): ``ainode requeue jobs|results``, ``ainode cancel``
and ``ainode complete``. Every action is audited with the OS account."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from node.cli.console import (
    USAGE,
    AllOption,
    ConfigOption,
    IdsArgument,
    console,
    fail,
    load,
    open_existing_store,
    operator,
    refused,
)

if TYPE_CHECKING:
    from node.operations.actions import Actions, Operator

R = TypeVar("R")

requeue_app = typer.Typer(
    help="Requeue failed or cancelled jobs, or results not delivered (recorded in the audit "
         "trail).", no_args_is_help=True)


def _with_actions(config: Path | None, action: Callable[[Actions, Operator], R]) -> R:
    """Run ``action`` on the node's job store as the OS account; a refusal exits 1."""
    from node.operations.actions import ActionRefused, Actions

    store = open_existing_store(load(config))
    try:
        return action(Actions(store), operator())
    except ActionRefused as exc:
        refused(exc)
    finally:
        store.close()


def _requeue(what: str, ids: list[int] | None, all_: bool, config: Path | None,
             requeue: Callable[[Actions, list[int] | None, Operator], list[int]]) -> None:
    if bool(ids) == all_:
        fail(f"name the {what} to requeue by id, or pass --all", USAGE)
    done = _with_actions(config, lambda actions, who: requeue(
        actions, None if all_ else ids, who))
    console.print(f"requeued {len(done)} {what}: {', '.join(map(str, done)) or '-'}")
    missing = sorted(set(ids or ()) - set(done))
    if missing:
        fail(f"not requeued (unknown, or not failed or waiting): {', '.join(map(str, missing))}")


@requeue_app.command("jobs")
def requeue_jobs(ids: IdsArgument = None, all_: AllOption = False,
                 config: ConfigOption = None) -> None:
    """Queue failed or cancelled jobs again with fresh attempts (--all: every failed one);
    a running node picks them up."""
    _requeue("jobs", ids, all_, config,
             lambda actions, job_ids, who: actions.requeue_jobs(job_ids, who))


@requeue_app.command("results")
def requeue_results(
    ids: IdsArgument = None, all_: AllOption = False,
    destination: Annotated[str | None, typer.Option(
        help="Everything waiting for this peer or notification: dead letters queued again,"
             " queued results sent now (a PACS back after an outage).")] = None,
    config: ConfigOption = None,
) -> None:
    """Send results again now: dead letters queued again, queued ones named sent without
    waiting out their backoff (--all: every dead letter; --destination: all for one)."""
    if destination is not None:
        if ids or all_:
            fail("--destination takes no ids and no --all", USAGE)
        done = _with_actions(config, lambda actions, who: actions.retry_destination(
            destination, who))
        console.print(f"{destination}: {len(done['requeued'])} dead letter(s) queued again, "
                      f"{len(done['now'])} waiting result(s) sent now", markup=False)
        return
    _requeue("results", ids, all_, config,
             lambda actions, item_ids, who: actions.requeue_results(item_ids, who))


def cancel(job: Annotated[int, typer.Argument(help="A job id from `ainode status`.")],
           config: ConfigOption = None) -> None:
    """Cancel a queued or running job (its results are not sent)."""
    _with_actions(config, lambda actions, who: actions.cancel_job(job, who))
    console.print(f"job {job} cancelled")


def complete(series: Annotated[str, typer.Argument(help="A Series Instance UID.")],
             config: ConfigOption = None) -> None:
    """Complete a series that is still receiving now, without waiting for its quiet period;
    it is routed at once."""
    revision = _with_actions(config, lambda actions, who: actions.complete_series(series, who))
    console.print(f"series {series} revision {revision} completed; it is routed now",
                  markup=False, highlight=False)
