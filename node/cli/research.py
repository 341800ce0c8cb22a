"""``ainode export`` (de-identified studies to a research destination) and ``ainode
reidentify`` (a pseudonym looked up in its crosswalk). Both audited."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from node.cli.console import (
    USAGE,
    ConfigOption,
    console,
    errors,
    fail,
    load,
    open_existing_store,
    operator,
)


def export_studies(
    studies: Annotated[list[str], typer.Argument(help="Study Instance UIDs the node keeps.")],
    to: Annotated[str, typer.Option("--to", help="A research[] entry of the configuration.")],
    profile: Annotated[str | None, typer.Option(
        "--profile", help="Instead of the entry's profile: basic, longitudinal, device.")] = None,
    config: ConfigOption = None,
) -> None:
    """De-identify studies (PS3.15 Annex E, keyed pseudonyms) to a research destination: a
    folder, or a DICOM / DICOMweb peer. Audited. Exits 1 when a study is refused or fails."""
    from node.operations.actions import ActionRefused, Actions

    settings = load(config)
    store = open_existing_store(settings)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task(f"to {to}", total=len(studies))
            report = Actions(store).export_studies(
                settings, to, studies, profile, operator(),
                on_progress=lambda _: progress.advance(task))
    except ActionRefused as exc:
        if exc.status == 502:
            fail(f"export to {to} failed: {exc}")
        fail(f"export not started: {exc}", USAGE)
    finally:
        store.close()
    for study, pseudonym in report.exported.items():
        console.print(f"{study} -> {pseudonym}", highlight=False)
    for study, reason in report.refused.items():
        errors.print(Text(f"{study}: refused: {reason}", style="red"))
    for what, reason in report.failed.items():
        errors.print(Text(f"{what}: {reason}", style="red"))
    for note in report.left_out:
        console.print(f"left out: {note}", highlight=False)
    console.print(f"{report.files} file(s) exported to {to}")
    if not report.ok:
        raise typer.Exit(1)


def reidentify(
    name: Annotated[str, typer.Argument(help="The research[] entry (its crosswalk).")],
    pseudonym: Annotated[str, typer.Argument(help="A pseudonym of that export.")],
    config: ConfigOption = None,
) -> None:
    """Look up what a pseudonym stands for, from the crosswalk of a research entry with
    `crosswalk: true` (authorised re-identification; audited)."""
    from node.research.export import Exporter

    settings = load(config)
    store = open_existing_store(settings)
    try:
        found = Exporter(settings, store, time.time).reidentify(name, pseudonym,
                                                                operator().name)
    finally:
        store.close()
    if not found:
        fail(f"no crosswalk entry for that pseudonym in {name!r} (is crosswalk on?)")
    for kind, original in found:
        console.print(f"{kind}: {original}", highlight=False)
