"""``ainode serve``: every role in its own OS process, started and kept alive by this one.

Processes: ``node.receiver_processes`` receivers (sharing the DICOM port with
``SO_REUSEPORT``), one worker (which runs ``inference.workers`` worker processes of its own),
one sender and, unless ``node.http_port`` is 0, one web role (HTTP: health, metrics, admin
API, STOW-RS). Each counts its metrics in ``<data_dir>/metrics``, which the web role adds up.
The supervisor first brings the job store's schema up to date and recovers
the spool (once, before any receiver writes to it), then starts the roles. A role process
that exits unexpectedly (a crash, the OOM killer) is started again after a growing pause;
the others keep running, so C-STORE is answered while a worker is replaced. SIGTERM (or
SIGINT) is passed to every role; each stops gracefully (associations finish, jobs finish or
are handed back), and the supervisor exits 0 once all have. Every role process dies with the
supervisor (``PR_SET_PDEATHSIG``), so a killed supervisor leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node.audit.atna import AuditForwarder, forward_remaining
from node.audit.trail import (
    MINOR_FAILURE,
    SERIOUS_FAILURE,
    SUCCESS,
    AuditTrail,
    node_name,
    record_start,
    record_stop,
)
from node.domain import AuditEvent
from node.runtime.process import die_with_parent
from node.runtime.retry import RetryPolicy
from node.settings import Settings
from node.store.jobs import JobStore
from node.store.layout import data_dir, open_store
from node.store.recovery import recover
from node.store.spool import Spool

log = logging.getLogger(__name__)

STEADY_S = 60.0  # a process that ran this long before exiting restarts without delay
EXTRA_STOP_S = 30.0  # beyond node.shutdown_grace_s, for jobs to be handed back


@dataclass
class _Role:
    name: str  # e.g. receiver-2
    role: str
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None


class Supervisor:
    def __init__(self, settings: Settings, config: Path | None, log_level: str) -> None:
        self._settings = settings
        self._config = config
        self._log_level = log_level
        self._stopping = threading.Event()
        self._backoff = RetryPolicy(first_s=1.0, max_s=30.0, window_s=0)
        receivers = settings.node.receiver_processes
        self._roles = [
            _Role(f"receiver-{i}" if receivers > 1 else "receiver", "receiver")
            for i in range(1, receivers + 1)
        ] + [_Role("worker", "worker"), _Role("sender", "sender")]
        if settings.node.http_port:
            self._roles.append(_Role("web", "web"))
        self._metrics_dir = data_dir(settings).metrics

    def prepare(self) -> None:
        """Schema up to date, spool recovered: before any role process runs."""
        store = open_store(self._settings)
        try:
            spool = Spool(data_dir(self._settings).spool, fsync=self._settings.node.fsync)
            recover(spool, store, time.time())
            # counters start again with the node (Prometheus handles the reset)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            self._metrics_dir.mkdir(parents=True, exist_ok=True)
            record_start(store, self._settings, "supervisor of " + self._role_names())
        finally:
            store.close()

    def _role_names(self) -> str:
        return "+".join(dict.fromkeys(role.role for role in self._roles))

    def _audit(self, record: Callable[[JobStore], None]) -> None:
        """One audit line from the supervisor (which keeps no store open)."""
        try:
            store = open_store(self._settings)
        except Exception as exc:
            log.error("audit line not recorded (%s)", exc.__class__.__name__)
            return
        try:
            record(store)
        finally:
            store.close()

    def _command(self, role: _Role) -> list[str]:
        command = [sys.executable, "-m", "node", "serve", "--role", role.role,
                   "--log-level", self._log_level, "--supervised"]
        if self._config is not None:
            command += ["--config", str(self._config)]
        return command

    def _start(self, role: _Role) -> None:
        environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self._metrics_dir)}
        role.process = subprocess.Popen(self._command(role), preexec_fn=die_with_parent,
                                        env=environment)
        role.started_at = time.monotonic()
        role.restart_at = None
        log.info("%s process started (pid %d)", role.name, role.process.pid)

    def run(self) -> int:
        """Start every role and keep them running until :meth:`request_stop`; returns the exit
        status (0 when every role stopped cleanly)."""
        for role in self._roles:
            self._start(role)
        while not self._stopping.wait(0.2):
            now = time.monotonic()
            for role in self._roles:
                if role.process is not None and role.process.poll() is not None:
                    self._exited(role, now)
                if role.restart_at is not None and now >= role.restart_at:
                    self._start(role)
        return self._stop_all()

    def _exited(self, role: _Role, now: float) -> None:
        assert role.process is not None
        code = role.process.returncode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        role.failures = 1 if now - role.started_at >= STEADY_S else role.failures + 1
        delay = 0.0 if role.failures == 1 else self._backoff.delay(role.failures - 1)
        log.error("%s process ended (%s); starting it again in %.0f s", role.name, how, delay)
        self._audit(lambda store: AuditTrail(store)(
            node_name(self._settings), AuditEvent.PROCESS_ENDED,
            f"{role.name} ({how}); started again in {delay:.0f} s", outcome=SERIOUS_FAILURE))
        role.process = None
        role.restart_at = now + delay

    def log_loaded_packages(self) -> None:
        """Log the top-level packages this process has imported (none of the roles' heavy
        ones: pynetdicom, highdicom, torch and MONAI live in the role processes only)."""
        loaded = sorted({name.partition(".")[0] for name in list(sys.modules)
                         if not name.startswith("_")})
        log.info("packages loaded: %s", " ".join(loaded))

    def request_stop(self) -> None:
        self._stopping.set()

    def _stop_all(self) -> int:
        running = [r for r in self._roles if r.process is not None and r.process.poll() is None]
        for role in running:
            assert role.process is not None
            role.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._settings.node.shutdown_grace_s + EXTRA_STOP_S
        status = 0
        for role in running:
            assert role.process is not None
            try:
                code = role.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s process did not stop in time: killed", role.name)
                role.process.kill()
                code = role.process.wait()
            if code == -signal.SIGTERM:  # ended by the stop signal itself: still starting,
                # before its handler was installed; it stopped as asked (nothing was in flight)
                log.info("%s process ended by the stop signal while starting", role.name)
            elif code != 0:
                log.error("%s process stopped with status %d", role.name, code)
                status = 1
        log.info("all roles stopped")
        def stopped(store: JobStore) -> None:
            record_stop(store, self._settings, "supervisor of " + self._role_names(),
                        SUCCESS if status == 0 else MINOR_FAILURE)
            if self._settings.audit.syslog is not None:  # the sender has stopped already
                forward_remaining(AuditForwarder(self._settings, store))

        self._audit(stopped)
        return status
