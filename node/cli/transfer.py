"""DICOM with peers by hand: ``ainode echo``, ``ainode send`` and ``ainode run`` (retrieve
studies from a PACS and route them as if pushed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from node.cli.console import (
    USAGE,
    ConfigOption,
    console,
    errors,
    fail,
    load,
    open_or_create_store,
    operator,
    peer_named,
    row,
)

if TYPE_CHECKING:
    from node.settings import Settings


def echo_command(
    peer: Annotated[str, typer.Argument(help="Peer name from the configuration.")],
    config: ConfigOption = None,
) -> None:
    """C-ECHO a configured peer."""
    echo_peer(load(config), peer)


def echo_peer(settings: Settings, peer: str) -> None:
    from node.dicom.scu import PeerUnavailable, echo

    target = peer_named(settings, peer)
    started = time.perf_counter()
    try:
        status = echo(target, settings.node.ae_title, node_tls=settings.node.tls)
    except PeerUnavailable as exc:
        fail(str(exc))
    console.print(f"C-ECHO {target.name}: status 0x{status:04X} "
                  f"({(time.perf_counter() - started) * 1000:.1f} ms)")
    if status != 0:
        raise typer.Exit(1)


def _is_part10(path: Path) -> bool:
    """A DICOM Part 10 file starts with a 128-byte preamble and ``DICM`` (PS3.10 7.1)."""
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def _expand(paths: list[Path]) -> list[Path]:
    """Files named, plus the Part 10 files under folders named (other files there are skipped)."""
    files: list[Path] = []
    skipped = 0
    for path in paths:
        if path.is_dir():
            for candidate in sorted(p for p in path.rglob("*") if p.is_file()):
                if _is_part10(candidate):
                    files.append(candidate)
                else:
                    skipped += 1
        elif path.is_file():
            files.append(path)
        else:
            fail(f"no such file or directory: {path}", USAGE)
    if skipped:
        errors.print(f"skipped {skipped} file(s) without a DICOM Part 10 header in the folders")
    return files


def send(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders of DICOM files.")],
    to: Annotated[str, typer.Option("--to", help="Peer name from the configuration.")],
    config: ConfigOption = None,
    calling_ae: Annotated[
        str | None, typer.Option(help="Calling AE title (default: this node's ae_title).")
    ] = None,
) -> None:
    """C-STORE files to a configured peer; exits non-zero if any file failed."""
    from node.dicom.scu import PeerUnavailable, send_files

    settings = load(config)
    target = peer_named(settings, to)
    files = _expand(paths)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=errors, transient=True) as progress:
        task = progress.add_task(f"sending to {to}", total=len(files))
        try:
            report = send_files(files, target, calling_ae or settings.node.ae_title,
                                on_progress=lambda _p, _s: progress.advance(task),
                                node_tls=settings.node.tls)
        except PeerUnavailable as exc:
            fail(str(exc))
    table = Table("status", "files", title=f"sent {len(files)} file(s) to {to}")
    for status, count in sorted(report.summary.items()):
        row(table, status, str(count))
    console.print(table)
    if report.failed:
        raise typer.Exit(1)


def run_studies(
    studies: Annotated[list[str], typer.Argument(help="Study Instance UIDs.")],
    source: Annotated[str, typer.Option("--from", help="The peer (PACS) to retrieve from.")],
    config: ConfigOption = None,
) -> None:
    """Retrieve studies from a PACS (C-GET, C-MOVE or WADO-RS, by the peer's `retrieve`) and
    route them as if pushed: a running node completes and processes them (audited)."""
    from node.ingest.intake import Intake
    from node.operations.actions import ActionRefused, Actions
    from node.operations.peers import PeerDirectory
    from node.store.layout import data_dir
    from node.store.series import CompletionPolicy, SeriesAssembler
    from node.store.spool import Spool

    settings = load(config)
    store = open_or_create_store(settings)
    failures = 0
    try:
        settings = PeerDirectory(settings, store).settings()
        peer = peer_named(settings, source)
        assembler = SeriesAssembler(store, CompletionPolicy(
            quiet_seconds=settings.series.quiet_seconds,
            use_expected_count=settings.series.use_expected_count), time.time)
        intake = Intake(Spool(data_dir(settings).spool, fsync=settings.node.fsync),
                        store.record_instance, assembler.instance_recorded, time.time,
                        min_free_mb=settings.node.min_free_disk_mb, transport="retrieve")
        actions, who = Actions(store), operator()
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[instances]} instance(s)"), TimeElapsedColumn(),
                      console=console) as progress:
            task = progress.add_task(f"from {peer.name}", total=len(studies), instances=0)
            counted = 0

            def one_more() -> None:
                nonlocal counted
                counted += 1
                progress.update(task, instances=counted)

            for study in studies:
                try:
                    result = actions.retrieve_study(settings, intake, peer.name, study, who,
                                                    on_instance=one_more)
                except ActionRefused as exc:
                    failures += 1
                    progress.console.print(Text(f"{study}: {exc}", style="red"))
                else:
                    failed = sum(result.failed.values())
                    failures += bool(failed) or not result.stored
                    progress.console.print(
                        f"{study}: {result.stored} stored by {result.method}"
                        + (f", {failed} failed {result.failed}" if failed else ""),
                        highlight=False)
                progress.advance(task)
    finally:
        store.close()
    if failures:
        raise typer.Exit(1)
