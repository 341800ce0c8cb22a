"""``ainode serve``: the supervisor (every role in its own process) or some roles here."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from node.cli.console import DEFAULT_CONFIG, USAGE, ConfigOption, fail, load, require_codes
from node.roles import ROLES, SHARED_SPOOL_SETTLE_S
from node.runtime import logs

if TYPE_CHECKING:
    from node.settings import Settings


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
    log_format: Annotated[
        str | None, typer.Option(
            help="text (default), or json: one JSON object per line (time, level, role, "
                 "logger, event, job/series ids), for a log aggregator; also "
                 "AINODE_LOG_FORMAT")] = None,
) -> None:
    """Run the node: every role (receivers, worker, sender, web) in its own supervised
    process."""
    if log_format is not None:
        if log_format not in logs.FORMATS:
            fail(f"--log-format must be one of {', '.join(logs.FORMATS)}", USAGE)
        os.environ[logs.LOG_FORMAT_ENV] = log_format  # role and worker processes inherit it
    settings = load(config)
    require_codes(settings, str(config or DEFAULT_CONFIG))
    if not role:
        _supervise(settings, config, log_level)
        return
    unknown = sorted(set(role) - set(ROLES))
    if unknown:
        fail(f"unknown role {', '.join(unknown)}: use {', '.join(ROLES)}", USAGE)
    _serve_roles(settings, role, log_level, supervised)


def _serve_roles(settings: Settings, role: list[str], log_level: str, supervised: bool) -> None:
    from node.audit.trail import record_start, record_stop
    from node.roles.node import Node
    from node.store.database import SchemaTooNew, StoreUnavailable

    roles = "+".join(r for r in ROLES if r in role)
    logs.configure(log_level, roles)
    everything = set(ROLES) - {"web"} <= set(role)
    settle = None if supervised else (0.0 if everything else SHARED_SPOOL_SETTLE_S)
    try:
        node = Node(settings, roles=role, recovery_settle_s=settle)
    except (SchemaTooNew, StoreUnavailable) as exc:
        fail(f"cannot start: {exc}")
    _on_stop_signals(node.request_stop)
    try:
        node.start()
    except OSError as exc:
        node.stop()
        fail(f"cannot start: {exc}")
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
    from node.store.database import SchemaTooNew, StoreUnavailable

    logs.configure(log_level, "supervisor")
    supervisor = Supervisor(settings, config, log_level)
    try:
        supervisor.prepare()
    except (SchemaTooNew, StoreUnavailable) as exc:
        fail(f"cannot start: {exc}")
    _on_stop_signals(supervisor.request_stop)
    # a debug command: `kill -USR1 <supervisor>` logs the packages it has loaded
    signal.signal(signal.SIGUSR1, lambda _signum, _frame: supervisor.log_loaded_packages())
    raise typer.Exit(supervisor.run())
