"""``ainode``: run the node, talk to peers, inspect its state."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from node import __version__
from node.audit.trail import MINOR_FAILURE, OUTCOME_NAMES, record_start, record_stop
from node.dicom.scu import PeerUnavailable, echo, send_files
from node.encode.outputs import size_text
from node.infer.backend import BackendUnavailable
from node.infer.repository import ModelConfigError, ModelNotFound, load_model_spec
from node.infer.segments import missing_codes
from node.jobs.workers import make_backend
from node.operations.peers import PeerChangeRefused, PeerDirectory
from node.roles.node import DB_FILE, ROLES, SHARED_SPOOL_SETTLE_S, SPOOL_DIR, Node, open_store
from node.runtime import logs
from node.settings import ConfigError, Peer, Settings, dump_settings, load_settings
from node.store.database import SchemaTooNew, StoreUnavailable
from node.store.jobs import JobStore
from node.store.outbox import Outbox
from node.store.queue import JobQueue

app = typer.Typer(help="ainode: PACS-integrated AI inference node.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration commands.", no_args_is_help=True)
app.add_typer(config_app, name="config")
models_app = typer.Typer(help="Model repository commands.", no_args_is_help=True)
app.add_typer(models_app, name="models")
requeue_app = typer.Typer(
    help="Requeue failed jobs or dead-lettered results (recorded in the audit trail).",
    no_args_is_help=True,
)
app.add_typer(requeue_app, name="requeue")
peers_app = typer.Typer(
    help="AE titles and peers, changed live (kept in the job store; a running node uses them "
    "at its next association, no restart).", no_args_is_help=True)
app.add_typer(peers_app, name="peers")
# Wide when piped (logs, scripts), so UIDs in tables are never cut.
class _MaskingConsole(Console):
    """A console that never prints a URL's credentials (:func:`logs.mask_credentials`)."""

    def print(self, *objects: Any, **options: Any) -> None:
        super().print(*(logs.mask_credentials(o) if isinstance(o, str) else o
                        for o in objects), **options)


console = _MaskingConsole() if sys.stdout.isatty() else _MaskingConsole(width=220)
errors = _MaskingConsole(stderr=True)

DEFAULT_CONFIG = Path("config/node.yaml")
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: config/node.yaml if present)."),
]


def _settings(path: Path | None) -> Settings:
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    try:
        return load_settings(path)
    except ConfigError as exc:
        errors.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc


@app.command()
def version() -> None:
    """Print the version."""
    console.print(__version__)


@app.command()
def serve(
    config: ConfigOption = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    role: Annotated[
        list[str] | None,
        typer.Option(help="Run only this role here (receiver, worker, sender, web;"
                     " repeatable), for nodes spread over several machines on one PostgreSQL"
                     " store."),
    ] = None,
    supervised: Annotated[bool, typer.Option(hidden=True)] = False,
) -> None:
    """Run the node: every role (receivers, worker, sender, web) in its own supervised
    process."""
    settings = _settings(config)
    _require_codes(settings, str(config or DEFAULT_CONFIG))
    if not role:
        _supervise(settings, config, log_level)
        return
    unknown = sorted(set(role) - set(ROLES))
    if unknown:
        errors.print(f"[red]unknown role {', '.join(unknown)}: use {', '.join(ROLES)}[/red]")
        raise typer.Exit(2)
    roles = "+".join(r for r in ROLES if r in role)
    logs.configure(log_level, roles)
    everything = set(ROLES) - {"web"} <= set(role)
    settle = None if supervised else (0.0 if everything else SHARED_SPOOL_SETTLE_S)
    try:
        node = Node(settings, roles=role, recovery_settle_s=settle)
    except (SchemaTooNew, StoreUnavailable) as exc:
        errors.print(f"[red]cannot start: {exc}[/red]", highlight=False)
        raise typer.Exit(1) from exc
    _on_stop_signals(node.request_stop)
    try:
        node.start()
    except OSError as exc:
        errors.print(f"[red]cannot start: {exc}[/red]")
        node.stop()
        raise typer.Exit(1) from exc
    if not supervised:  # the supervisor records its own start and stop
        record_start(node.store, settings, roles)
    node.wait()
    if not supervised:
        record_stop(node.store, settings, roles)
    node.stop()


def _on_stop_signals(stop: Callable[[], None]) -> None:
    def _stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("signal %d: stopping", signum)
        stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


def _supervise(settings: Settings, config: Path | None, log_level: str) -> None:
    from node.roles.supervisor import Supervisor

    logs.configure(log_level, "supervisor")
    supervisor = Supervisor(settings, config, log_level)
    try:
        supervisor.prepare()
    except (SchemaTooNew, StoreUnavailable) as exc:
        errors.print(f"[red]cannot start: {exc}[/red]", highlight=False)
        raise typer.Exit(1) from exc
    _on_stop_signals(supervisor.request_stop)
    raise typer.Exit(supervisor.run())


@app.command("echo")
def echo_command(
    peer: Annotated[str, typer.Argument(help="Peer name from the configuration.")],
    config: ConfigOption = None,
) -> None:
    """C-ECHO a configured peer."""
    _echo(_settings(config), peer)


def _echo(settings: Settings, peer: str) -> None:
    target = _peer(settings, peer)
    started = time.perf_counter()
    try:
        status = echo(target, settings.node.ae_title, node_tls=settings.node.tls)
    except PeerUnavailable as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"C-ECHO {target.name}: status 0x{status:04X} "
                  f"({(time.perf_counter() - started) * 1000:.1f} ms)")
    if status != 0:
        raise typer.Exit(1)


def _peer(settings: Settings, name: str) -> Peer:
    try:
        return settings.peer(name)
    except KeyError as exc:
        errors.print(f"[red]{exc.args[0]}[/red]")
        raise typer.Exit(2) from exc


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
            errors.print(f"[red]no such file or directory: {path}[/red]")
            raise typer.Exit(2)
    if skipped:
        errors.print(f"skipped {skipped} file(s) without a DICOM Part 10 header in the folders")
    return files


@app.command()
def send(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders of DICOM files.")],
    to: Annotated[str, typer.Option("--to", help="Peer name from the configuration.")],
    config: ConfigOption = None,
    calling_ae: Annotated[
        str | None, typer.Option(help="Calling AE title (default: this node's ae_title).")
    ] = None,
) -> None:
    """C-STORE files to a configured peer; exits non-zero if any file failed."""
    settings = _settings(config)
    target = _peer(settings, to)
    files = _expand(paths)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=errors, transient=True) as progress:
        task = progress.add_task(f"sending to {to}", total=len(files))
        try:
            report = send_files(
                files,
                target,
                calling_ae or settings.node.ae_title,
                on_progress=lambda _p, _s: progress.advance(task),
                node_tls=settings.node.tls,
            )
        except PeerUnavailable as exc:
            errors.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
    table = Table("status", "files", title=f"sent {len(files)} file(s) to {to}")
    for status, count in sorted(report.summary.items()):
        _row(table, status, str(count))
    console.print(table)
    if report.failed:
        raise typer.Exit(1)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


@app.command()
def status(
    config: ConfigOption = None,
    limit: Annotated[int, typer.Option(help="How many series to list.")] = 20,
) -> None:
    """What the dashboard shows: overview (throughput, queue, disk, backend), series, jobs and
    undelivered results, read from the job store."""
    from node.operations import readiness

    settings = _settings(config)
    store = _open_existing_store(settings)
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
    _row(overview, str(seen.received_hour), str(seen.received_day),
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
        _row(table,
            s.series_instance_uid,
            str(s.revision),
            s.modality,
            s.calling_ae,
            s.state.value,
            f"{s.instance_count}" + (f"/{s.expected_count}" if s.expected_count else ""),
            str(s.duplicate_count),
            _when(s.last_received_at),
            f"{_when(s.completed_at)} ({s.completion_reason})" if s.completed_at else "-",
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
                ", ".join(f"{k} {size_text(v)}" for k, v in job.result["labels"].items())
                if job.result and "labels" in job.result
                else ""
            )
            if job.superseded_by:
                detail = f"superseded by revision {job.superseded_by}; {detail}"
            _row(job_table,
                str(job.id),
                job.series_instance_uid,
                str(job.revision),
                job.pipeline,
                job.model,
                job.state.value,
                str(job.attempts),
                _when(job.updated_at),
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


def _row(table: Table, *values: object) -> None:
    """A table row whose cells are shown as text: control characters escaped (a name cannot
    move the cursor or fake a line), no rich markup, credentials in URLs masked."""
    table.add_row(*(value if isinstance(value, Text) else
                    Text(logs.printable(logs.mask_credentials(str(value))))
                    for value in values))


def parse_since(text: str, now: float) -> float:
    """``30m``, ``24h``, ``7d`` ago, or a date / date-time (ISO 8601, local time) as epoch
    seconds; ``ValueError`` when it is neither."""
    units = {"m": 60, "h": 3600, "d": 86400}
    if text[:-1].isdigit() and text[-1:] in units:
        return now - int(text[:-1]) * units[text[-1]]
    return dt.datetime.fromisoformat(text).timestamp()


@app.command()
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
        errors.print(f"--since {since!r}: give 30m, 24h, 7d or a date such as 2026-11-29")
        raise typer.Exit(2) from None
    settings = _settings(config)
    store = _open_existing_store(settings)
    try:
        lines = store.audit_lines(limit, start)
    finally:
        store.close()
    table = Table("when", "who", "from", "what", "outcome", "detail",
                  title=f"audit trail since {_when(start)}")
    for line in lines:
        _row(table, _when(line.at), line.actor, line.address or "-", line.action,
                      OUTCOME_NAMES.get(line.outcome, str(line.outcome)), line.detail)
    console.print(table)


def _open_existing_store(settings: Settings) -> JobStore:
    if settings.store.url is None and not (settings.node.data_dir / DB_FILE).exists():
        errors.print(f"no job store under {settings.node.data_dir}: has the node run yet?")
        raise typer.Exit(1)
    try:
        return open_store(settings)
    except (SchemaTooNew, StoreUnavailable) as exc:
        errors.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from exc


def _requeue(
    what: str,
    ids: list[int] | None,
    all_: bool,
    config: Path | None,
    requeue: Callable[[JobStore, list[int] | None, float], list[int]],
) -> None:
    if bool(ids) == all_:
        errors.print(f"name the {what} to requeue by id, or pass --all")
        raise typer.Exit(2)
    settings = _settings(config)
    store = _open_existing_store(settings)
    try:
        now = time.time()
        done = requeue(store, None if all_ else ids, now)
        if done:
            store.audit(_operator(), f"requeue {what}", ", ".join(map(str, done)), now)
    finally:
        store.close()
    missing = sorted(set(ids or ()) - set(done))
    console.print(f"requeued {len(done)} {what}: {', '.join(map(str, done)) or '-'}")
    if missing:
        errors.print(f"not requeued (unknown, or not in a final failed state): "
                     f"{', '.join(map(str, missing))}")
        raise typer.Exit(1)


def _operator() -> str:
    """Who ran a command, for the audit trail: the OS account."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


IdsArgument = Annotated[list[int] | None, typer.Argument(help="Ids from `ainode status`.")]
AllOption = Annotated[bool, typer.Option("--all", help="Every one in that state.")]


@requeue_app.command("jobs")
def requeue_jobs(ids: IdsArgument = None, all_: AllOption = False,
                 config: ConfigOption = None) -> None:
    """Queue failed jobs again with fresh attempts (a running node picks them up)."""
    _requeue("jobs", ids, all_, config, lambda store, i, now: JobQueue(store).requeue(i, now))


@requeue_app.command("results")
def requeue_results(
    ids: IdsArgument = None, all_: AllOption = False,
    destination: Annotated[str | None, typer.Option(
        help="Everything waiting for this peer or notification: dead letters queued again,"
             " queued results sent now (a PACS back after an outage).")] = None,
    config: ConfigOption = None,
) -> None:
    """Queue dead-lettered results again for delivery (a running node sends them); with
    --destination, also cut short the backoff of results still queued for it."""
    if destination is not None:
        if ids or all_:
            errors.print("--destination takes no ids and no --all")
            raise typer.Exit(2)
        _retry_destination(destination, config)
        return
    _requeue("results", ids, all_, config, lambda store, i, now: Outbox(store).requeue(i, now))


def _retry_destination(destination: str, config: Path | None) -> None:
    from node.operations.actions import ActionRefused, retry_destination
    from node.web.context import WebContext

    settings = _settings(config)
    store = _open_existing_store(settings)
    try:
        context = WebContext(settings, store, PeerDirectory(settings, store))
        done = retry_destination(context, destination, (_operator(), ""))
    except ActionRefused as exc:
        errors.print(str(exc), markup=False)
        raise typer.Exit(1) from None
    finally:
        store.close()
    console.print(f"{destination}: {len(done['requeued'])} dead letter(s) queued again, "
                  f"{len(done['now'])} waiting result(s) sent now", markup=False)


@models_app.command("check")
def models_check(config: ConfigOption = None) -> None:
    """Check every model the pipelines use: in the repository, and ready on the backend."""
    settings = _settings(config)
    backend = make_backend(settings)
    names = sorted({p.model for p in settings.pipelines})
    if not names:
        errors.print("no pipelines configured: nothing to check")
    table = Table("model", "version", "backend", "state")
    failed = 0
    for name in names:
        try:
            spec = load_model_spec(settings.inference.model_repository, name)
            backend.check(spec)
            _row(table, name, spec.version, backend.name, "ready")
        except (ModelNotFound, ModelConfigError, BackendUnavailable) as exc:
            failed += 1
            _row(table, name, "-", backend.name, Text(logs.printable(str(exc)), style="red"))
    backend.close()
    console.print(table)
    if failed:
        raise typer.Exit(1)


@models_app.command("import")
def models_import(
    bundle: Annotated[Path, typer.Argument(help="A MONAI bundle: its directory or a zip.")],
    name: Annotated[str | None, typer.Option(help="Model name (default: the bundle's).")] = None,
    format_: Annotated[str, typer.Option(
        "--format", help="onnx (both backends) or torchscript (Triton pytorch_libtorch)."
    )] = "onnx",
    codes: Annotated[Path | None, typer.Option(
        help="YAML: label -> {category, type, color}, for labels the built-in table lacks."
    )] = None,
    replace: Annotated[bool, typer.Option(help="Replace a model of the same name.")] = False,
    override: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE (VALUE as JSON), a bundle setting, e.g. displayable_configs#highres=false."
    )] = None,
    config: ConfigOption = None,
) -> None:
    """Import a MONAI bundle into the configuration's model repository."""
    # torch + MONAI: imported by this command only, never by `ainode serve`
    from node.bundles.export import PLATFORMS
    from node.bundles.importer import import_bundle
    from node.bundles.source import BundleRefused

    if format_ not in PLATFORMS:
        errors.print(f"--format must be one of {', '.join(PLATFORMS)}")
        raise typer.Exit(2)
    overrides = {}
    for item in override or []:
        key, _, raw = item.partition("=")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw  # a plain string
    settings = _settings(config)
    try:
        report = import_bundle(bundle, settings.inference.model_repository, name, format_,
                               codes, replace, overrides)
    except BundleRefused as exc:
        errors.print(f"[red]refused:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    spec = report.spec
    for note in report.notes:
        errors.print(f"note: {note}", highlight=False, markup=False)
    console.print(
        f"imported {spec.name} version {spec.version} ({spec.platform}) into "
        f"{spec.model_file.parent.parent} in {report.seconds:.1f} s; labels: "
        f"{', '.join(spec.labels[1:])}; export checked (max relative difference "
        f"{report.export_difference:.1e})", highlight=False, markup=False,
    )


@config_app.command("check")
def config_check(
    file: Annotated[Path, typer.Argument(help="Configuration file to validate.")],
) -> None:
    """Validate a configuration file and print the effective configuration."""
    settings = _settings(file)
    console.print(dump_settings(settings), highlight=False, markup=False)
    _require_codes(settings, str(file))
    errors.print(f"{file}: valid")


def _require_codes(settings: Settings, source: str) -> None:
    """Refuse a configuration whose results could not be encoded (exit 2, naming each)."""
    problems = missing_codes(settings)
    if problems:
        errors.print(f"[red]invalid configuration in {source}:[/red]", highlight=False)
        for problem in problems:
            errors.print(f"  {problem}", highlight=False, markup=False)
        raise typer.Exit(2)


if __name__ == "__main__":  # pragma: no cover
    app()


def _directory(config: Path | None) -> tuple[Settings, JobStore, PeerDirectory]:
    settings = _settings(config)
    store = _open_existing_store(settings) if settings.store.url or (
        settings.node.data_dir / DB_FILE).exists() else _new_store(settings)
    return settings, store, PeerDirectory(settings, store)


def _new_store(settings: Settings) -> JobStore:
    settings.node.data_dir.mkdir(parents=True, exist_ok=True)
    return open_store(settings)


@peers_app.command("list")
def peers_list(config: ConfigOption = None) -> None:
    """Peers in effect: from the configuration file, or changed live."""
    _, store, directory = _directory(config)
    try:
        entries = directory.entries()
    finally:
        store.close()
    table = Table("name", "AE title", "host", "port", "DICOMweb", "results", "TLS", "source",
                  "changed")
    for entry in entries:
        peer = entry.peer
        _row(table, peer.name, peer.ae_title, peer.host, str(peer.port),
                      peer.dicomweb_url or "-", ",".join(peer.results or []) or "all",
                      "yes" if peer.tls else "no", entry.source,
                      f"{_when(entry.updated_at)} by {entry.updated_by}"
                      if entry.updated_at else "-")
    console.print(table)


@peers_app.command("add")
def peers_add(
    name: Annotated[str, typer.Argument(help="The peer's name (pipelines' destinations).")],
    ae_title: Annotated[str, typer.Option("--ae-title", help="Its AE title.")],
    host: Annotated[str, typer.Option(help="Host name or address.")],
    port: Annotated[int, typer.Option(help="DICOM port.")],
    dicomweb_url: Annotated[str | None, typer.Option(help="Results by STOW-RS here.")] = None,
    results: Annotated[str | None, typer.Option(help="Kinds it wants: seg,sr,sc.")] = None,
    calling_from: Annotated[list[str] | None, typer.Option(
        "--from", help="Addresses or networks it may call from (repeatable).")] = None,
    tls: Annotated[bool, typer.Option(help="C-STORE / C-ECHO to it over DICOM TLS.")] = False,
    config: ConfigOption = None,
) -> None:
    """Add or change a peer (validated like the configuration file; audited)."""
    definition: dict[str, object] = {"name": name, "ae_title": ae_title, "host": host,
                                     "port": port, "tls": tls}
    if dicomweb_url:
        definition["dicomweb_url"] = dicomweb_url
    if results:
        definition["results"] = [kind.strip() for kind in results.split(",") if kind.strip()]
    if calling_from:
        definition["hosts"] = calling_from
    _, store, directory = _directory(config)
    try:
        peer, created = directory.put(definition, _operator())
    except PeerChangeRefused as exc:
        errors.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc
    finally:
        store.close()
    console.print(f"{'added' if created else 'changed'} {peer.name}: "
                  f"{peer.ae_title}@{peer.host}:{peer.port}")


@peers_app.command("remove")
def peers_remove(name: Annotated[str, typer.Argument()], config: ConfigOption = None) -> None:
    """Remove a peer (refused while a pipeline sends results to it; audited)."""
    _, store, directory = _directory(config)
    try:
        directory.remove(name, _operator())
    except KeyError:
        errors.print(f"no peer named {name!r}")
        raise typer.Exit(1) from None
    except PeerChangeRefused as exc:
        errors.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc
    finally:
        store.close()
    console.print(f"removed {name}")


@peers_app.command("reset")
def peers_reset(name: Annotated[str, typer.Argument()], config: ConfigOption = None) -> None:
    """Forget the live change to a peer: the configuration file's entry applies again."""
    _, store, directory = _directory(config)
    try:
        found = directory.reset(name, _operator())
    finally:
        store.close()
    if not found:
        errors.print(f"peer {name!r} has no live change")
        raise typer.Exit(1)
    console.print(f"{name}: back to the configuration file")


@peers_app.command("echo")
def peers_echo(name: Annotated[str, typer.Argument()], config: ConfigOption = None) -> None:
    """C-ECHO a peer in effect (also one added live)."""
    _, store, directory = _directory(config)
    try:
        settings = directory.settings()
    finally:
        store.close()
    _echo(settings, name)


@app.command()
def conformance(config: ConfigOption = None) -> None:
    """Print the DICOM Conformance Statement (Markdown; docs/conformance.md is this output)."""
    from node.operations.conformance import statement

    sys.stdout.write(statement(_settings(config)))


@app.command("run")
def run_studies(
    studies: Annotated[list[str], typer.Argument(help="Study Instance UIDs.")],
    source: Annotated[str, typer.Option("--from", help="The peer (PACS) to retrieve from.")],
    config: ConfigOption = None,
) -> None:
    """Retrieve studies from a PACS (C-GET, C-MOVE or WADO-RS, by the peer's `retrieve`) and
    route them as if pushed: a running node completes and processes them (audited)."""
    from node.ingest.intake import Intake
    from node.ingest.retrieve import RetrieveFailed, Retriever
    from node.store.series import CompletionPolicy, SeriesAssembler
    from node.store.spool import Spool

    settings, store, directory = _directory(config)
    failures = 0
    try:
        settings = directory.settings()
        peer = _peer(settings, source)
        assembler = SeriesAssembler(store, CompletionPolicy(
            quiet_seconds=settings.series.quiet_seconds,
            use_expected_count=settings.series.use_expected_count), time.time)
        intake = Intake(Spool(settings.node.data_dir / SPOOL_DIR, fsync=settings.node.fsync),
                        store.record_instance, assembler.instance_recorded, time.time,
                        min_free_mb=settings.node.min_free_disk_mb, transport="retrieve")
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[instances]} instance(s)"), TimeElapsedColumn(),
                      console=console) as progress:
            task = progress.add_task(f"from {peer.name}", total=len(studies), instances=0)
            counted = 0

            def one_more() -> None:
                nonlocal counted
                counted += 1
                progress.update(task, instances=counted)

            retriever = Retriever(settings, intake, on_instance=one_more)
            for study in studies:
                try:
                    result = retriever.study(peer, study)
                except RetrieveFailed as exc:
                    failures += 1
                    progress.console.print(f"[red]{study}: {exc}[/red]", highlight=False)
                    store.audit(_operator(), "study retrieve failed", f"from {peer.name}: {exc}",
                                time.time(), objects=[("study", study)], outcome=MINOR_FAILURE)
                else:
                    failed = sum(result.failed.values())
                    failures += bool(failed) or not result.stored
                    progress.console.print(
                        f"{study}: {result.stored} stored by {result.method}"
                        + (f", {failed} failed {result.failed}" if failed else ""),
                        highlight=False)
                    store.audit(_operator(), "study retrieved",
                                f"from {peer.name} by {result.method}: {result.stored} "
                                "instance(s)", time.time(), objects=[("study", study)])
                progress.advance(task)
    finally:
        store.close()
    if failures:
        raise typer.Exit(1)


@app.command("export")
def export_studies(
    studies: Annotated[list[str], typer.Argument(help="Study Instance UIDs the node keeps.")],
    to: Annotated[str, typer.Option("--to", help="A research[] entry of the configuration.")],
    profile: Annotated[str | None, typer.Option(
        "--profile", help="Instead of the entry's profile: basic, longitudinal, device.")] = None,
    config: ConfigOption = None,
) -> None:
    """De-identify studies (PS3.15 Annex E, keyed pseudonyms) to a research destination: a
    folder, or a DICOM / DICOMweb peer. Audited. Exits 1 when a study is refused or fails."""
    from node.research.export import DestinationFailed, Exporter, ExportError

    settings = _settings(config)
    store = _open_existing_store(settings)
    try:
        exporter = Exporter(settings, store, time.time)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task(f"to {to}", total=len(studies))
            report = exporter.export(to, studies, profile, actor=_operator(),
                                     on_progress=lambda _: progress.advance(task))
    except ExportError as exc:
        errors.print(f"[red]export not started: {exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc
    except DestinationFailed as exc:
        errors.print(f"[red]export to {to} failed: {exc}[/red]", highlight=False)
        raise typer.Exit(1) from exc
    finally:
        store.close()
    for study, pseudonym in report.exported.items():
        console.print(f"{study} -> {pseudonym}", highlight=False)
    for study, reason in report.refused.items():
        errors.print(f"[red]{study}: refused: {reason}[/red]", highlight=False)
    for what, reason in report.failed.items():
        errors.print(f"[red]{what}: {reason}[/red]", highlight=False)
    for note in report.left_out:
        console.print(f"left out: {note}", highlight=False)
    console.print(f"{report.files} file(s) exported to {to}")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def reidentify(
    name: Annotated[str, typer.Argument(help="The research[] entry (its crosswalk).")],
    pseudonym: Annotated[str, typer.Argument(help="A pseudonym of that export.")],
    config: ConfigOption = None,
) -> None:
    """Look up what a pseudonym stands for, from the crosswalk of a research entry with
    `crosswalk: true` (authorised re-identification; audited)."""
    from node.research.export import Exporter

    settings = _settings(config)
    store = _open_existing_store(settings)
    try:
        found = Exporter(settings, store, time.time).reidentify(name, pseudonym, _operator())
    finally:
        store.close()
    if not found:
        errors.print(f"no crosswalk entry for that pseudonym in {name!r} (is crosswalk on?)")
        raise typer.Exit(1)
    for kind, original in found:
        console.print(f"{kind}: {original}", highlight=False)
