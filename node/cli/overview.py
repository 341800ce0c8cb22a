"""Reading the node's state: ``ainode status`` (what the dashboard shows), ``ainode audit``
(the audit trail) and ``ainode conformance`` (the DICOM Conformance Statement)."""

from __future__ import annotations

import datetime as dt
import sys
import time
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from node.cli.console import (
    USAGE,
    ConfigOption,
    console,
    errors,
    fail,
    load,
    open_existing_store,
    row,
    when,
)
from node.runtime import logs


def status(
    config: ConfigOption = None,
    limit: Annotated[int, typer.Option(help="How many series to list.")] = 20,
) -> None:
    """What the dashboard shows: overview (throughput, queue, disk, backend), series, jobs and
    undelivered results, read from the job store."""
    from node.domain import Finding
    from node.operations import readiness
    from node.store.outbox import Outbox
    from node.store.queue import JobQueue

    settings = load(config)
    store = open_existing_store(settings)
    try:
        seen = readiness.overview(settings, store, time.time())
        totals = store.totals()
        series = store.list_series(limit)
        queue = JobQueue(store)
        job_counts = queue.counts()
        jobs = queue.jobs(limit)
        outbox = Outbox(store)
        deliveries = outbox.by_destination()
        undelivered = [i for i in outbox.items(limit) if i[4] != "sent"]
    finally:
        store.close()
    overview = Table("received (1 h)", "received (24 h)", "jobs queued/running", "jobs failed",
                     "dead letters", "disk free", "backend", title="overview")
    row(overview, str(seen.received_hour), str(seen.received_day),
                     str(job_counts["queued"] + job_counts["running"]), str(job_counts["failed"]),
                     str(sum(c.get("dead", 0) for c in deliveries.values())),
                     f"{readiness.bytes_text(seen.free_bytes)} "
                     f"(floor {readiness.bytes_text(seen.floor_bytes)})",
                     seen.backend + ("" if seen.backend != "triton"
                                     else ": ready" if seen.backend_ready else ": NOT READY"))
    console.print(overview)
    for name, why in seen.checks.items():
        if why is not None:
            errors.print(f"[red]not ready: {name}: {why}[/red]", highlight=False)
    console.print(
        f"instances {totals['instances']}  series receiving {totals['series_receiving']}  "
        f"complete {totals['series_complete']}  duplicates {totals['duplicates']}"
    )
    table = Table(
        "series",
        "rev",
        "modality",
        "from",
        "state",
        "instances",
        "dup",
        "last received",
        "completed (reason)",
        "routing",
    )
    for s in series:
        row(table,
            s.series_instance_uid,
            str(s.revision),
            s.modality,
            s.calling_ae,
            s.state.value,
            f"{s.instance_count}" + (f"/{s.expected_count}" if s.expected_count else ""),
            str(s.duplicate_count),
            when(s.last_received_at),
            f"{when(s.completed_at)} ({s.completion_reason})" if s.completed_at else "-",
            f"{s.route_state}: {s.route_detail}" if s.route_state else "-",
        )
    console.print(table)
    console.print("jobs " + "  ".join(f"{state} {count}" for state, count in job_counts.items()))
    if jobs:
        job_table = Table(
            "job", "series", "rev", "pipeline", "model", "state", "attempts", "updated", "detail"
        )
        for job in jobs:
            detail = job.error or (
                ", ".join(f"{k} {Finding.from_json(v).size_text()}"
                          for k, v in job.result["labels"].items())
                if job.result and "labels" in job.result
                else ""
            )
            if job.superseded_by:
                detail = f"superseded by revision {job.superseded_by}; {detail}"
            row(job_table,
                str(job.id),
                job.series_instance_uid,
                str(job.revision),
                job.pipeline,
                job.model,
                job.state.value,
                str(job.attempts),
                when(job.updated_at),
                detail,
            )
        console.print(job_table)
    for destination, counts in sorted(deliveries.items()):
        console.print(
            f"results to {destination}: "
            + "  ".join(f"{state} {count}" for state, count in counts.items())
        )
    for item_id, destination, kind, uid, state, attempts, error in undelivered:
        console.print(Text(logs.printable(logs.mask_credentials(
            f"  result {item_id}: {destination} {kind} {uid}: {state} after {attempts}"
            f" attempt(s){': ' + error if error else ''}"))))


def parse_since(text: str, now: float) -> float:
    """``30m``, ``24h``, ``7d`` ago, or a date / date-time (ISO 8601, local time) as epoch
    seconds; ``ValueError`` when it is neither."""
    units = {"m": 60, "h": 3600, "d": 86400}
    if text[:-1].isdigit() and text[-1:] in units:
        return now - int(text[:-1]) * units[text[-1]]
    return dt.datetime.fromisoformat(text).timestamp()


def audit(
    config: ConfigOption = None,
    since: Annotated[str, typer.Option(
        help="From when: 30m, 24h, 7d ago, or a date / date-time (2026-11-29T08:00).")] = "7d",
    limit: Annotated[int, typer.Option(help="At most this many lines, newest first.")] = 200,
) -> None:
    """The audit trail: associations accepted and rejected, jobs, results sent, requeues."""
    try:
        start = parse_since(since, time.time())
    except ValueError:
        fail(f"--since {since!r}: give 30m, 24h, 7d or a date such as 2026-11-29", USAGE)
    from node.audit.trail import OUTCOME_NAMES

    settings = load(config)
    store = open_existing_store(settings)
    try:
        lines = store.audit_lines(limit, start)
    finally:
        store.close()
    table = Table("when", "who", "from", "what", "outcome", "detail",
                  title=f"audit trail since {when(start)}")
    for line in lines:
        row(table, when(line.at), line.actor, line.address or "-", line.action,
                      OUTCOME_NAMES.get(line.outcome, str(line.outcome)), line.detail)
    console.print(table)


def conformance(config: ConfigOption = None) -> None:
    """Print the DICOM Conformance Statement (Markdown; docs/conformance.md is this output)."""
    from node.operations.conformance import statement

    sys.stdout.write(statement(load(config)))
