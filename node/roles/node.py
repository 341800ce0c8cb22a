"""Composition root: build the node's parts from settings, start and stop them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from node.audit.atna import AuditForwarder, forward_remaining
from node.audit.trail import AuditTrail
from node.domain import CompletionReason, SeriesKey
from node.egress.delivery import Delivery
from node.ingest.dimse import (
    StorageHandlers,
    build_storage_ae,
    listeners,
    start_storage_server,
)
from node.jobs.orchestrator import Orchestrator, Router
from node.jobs.workers import ProcessExecutor, make_backend
from node.operations.peers import PeerDirectory
from node.operations.retention import Retention
from node.research.outbox import research_targets
from node.roles import ROLES
from node.runtime.loops import Loop
from node.settings import Settings
from node.store.layout import DataDir, open_store
from node.store.outbox import Outbox
from node.store.recovery import recover
from node.store.series import CompletionPolicy, SeriesAssembler
from node.store.spool import Spool

log = logging.getLogger(__name__)



class Node:
    """A running node, or some of its roles (``ainode serve --role``): the receiver (Storage
    SCP, spool, series completion, routing), the worker (jobs, on worker processes) and the
    sender (the outbox). Roles in other processes or on other machines share the job store,
    which wakes them when work appears (LISTEN/NOTIFY on PostgreSQL)."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        roles: Iterable[str] = ROLES,
        *,
        recovery_settle_s: float | None = 0.0,
    ) -> None:
        """``recovery_settle_s``: how old a spool file must be for the receiver's start-up
        recovery to touch it (``None``: no recovery, the supervisor ran it)."""
        self.settings = settings
        self.roles = frozenset(roles)
        unknown = self.roles - set(ROLES)
        if unknown:
            raise ValueError(f"unknown role(s): {', '.join(sorted(unknown))}")
        self._clock = clock
        self._recovery_settle_s = recovery_settle_s
        data_dir = settings.node.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = open_store(settings)
        audit = AuditTrail(self.store, clock)
        self.peers = PeerDirectory(settings, self.store, clock)
        current = self.peers.settings  # peers changed live (admin API), seen at each use
        self._servers: list[Any] = []
        self._stopping = threading.Event()
        self._wakes: dict[str, threading.Event] = {}
        self.delivery: Delivery | None = None
        self.orchestrator: Orchestrator | None = None
        self.router: Router | None = None
        if "sender" in self.roles:
            self.delivery = Delivery(settings, Outbox(self.store), clock, audit,
                                     owns_store=self.store.dialect == "sqlite", current=current,
                                     targets=[research_targets(self.store, clock)])
            self._wakes["outbox"] = self.delivery.wake
        if "worker" in self.roles:
            # jobs found running at start were this process's when it is the only worker
            owns_store = self.store.dialect == "sqlite"
            if settings.inference.isolation == "process":  # models never load in this process
                self.orchestrator = Orchestrator(
                    settings, self.store, None, clock, on_outbox=self._wake_sender,
                    executor_factory=lambda index: ProcessExecutor(settings, f"worker-{index}"),
                    owns_store=owns_store, audit=audit, current=current)
            else:
                self.orchestrator = Orchestrator(
                    settings, self.store, make_backend(settings), clock,
                    on_outbox=self._wake_sender, owns_store=owns_store, audit=audit,
                    current=current)
            self._wakes["jobs"] = self.orchestrator.wake
        self._retention: Loop | None = None
        if "sender" in self.roles and settings.retention.enabled:
            retention = Retention(settings, self.store, clock, audit)
            self._retention = Loop("retention", retention.sweep, settings.retention.interval_s)
        self._forwarder: AuditForwarder | None = None
        self._forwarding: Loop | None = None
        if "sender" in self.roles and settings.audit.syslog is not None:
            self._forwarder = AuditForwarder(settings, self.store)
            self._forwarding = Loop("audit-forwarder", self._forwarder.forward,
                                    settings.audit.interval_s)
        self._sweeper = Loop("housekeeping", self._sweep, settings.series.sweep_interval_s)
        self.spool = Spool(DataDir(data_dir).spool, fsync=settings.node.fsync)
        policy = CompletionPolicy(
            quiet_seconds=settings.series.quiet_seconds,
            complete_on_release=settings.series.complete_on_release,
            use_expected_count=settings.series.use_expected_count,
        )
        if "receiver" in self.roles:
            self.router = (self.orchestrator.router if self.orchestrator is not None
                           else Router(settings, self.store, clock))
            self.assembler = SeriesAssembler(self.store, policy, clock, self._series_complete)
            self._handlers = StorageHandlers(
                settings,
                self.spool,
                self.store.record_instance,
                self.assembler.instance_recorded,
                lambda assoc_id, released: self.assembler.association_ended(
                    assoc_id, released=released
                ),
                clock,
                audit=audit,
            )
            self._wakes["series"] = self._sweeper.wake
        self._web: Any = None
        if "web" in self.roles and settings.node.http_port:
            self._web = self._web_server(policy, clock)

    def _web_server(self, policy: CompletionPolicy, clock: Callable[[], float]) -> Any:
        """The HTTP server; its STOW-RS input and on-demand retrieves keep instances as the
        receiver does (counted by transport)."""
        from node.ingest.intake import Intake
        from node.ingest.stow import StowReceiver
        from node.web.context import WebContext
        from node.web.server import WebServer

        settings = self.settings
        assembler = (self.assembler if "receiver" in self.roles
                     else SeriesAssembler(self.store, policy, clock))
        def intake(transport: str) -> Intake:
            return Intake(self.spool, self.store.record_instance, assembler.instance_recorded,
                          clock, min_free_mb=settings.node.min_free_disk_mb,
                          transport=transport)

        stow = StowReceiver(intake("stow"), settings.node.ae_title,
                            settings.node.max_instance_mb,
                            on_end=lambda batch, released: assembler.association_ended(
                                batch, released=released))
        # studies retrieved on demand through the API count as retrieved, as `ainode run`'s
        return WebServer(WebContext(settings, self.store, self.peers, stow, clock=clock,
                                    intake=intake("retrieve")))

    def _wake_sender(self) -> None:
        if self.delivery is not None:
            self.delivery.wake.set()

    def _series_complete(self, key: SeriesKey, reason: CompletionReason) -> None:
        """Completion is durable already; routing happens on the housekeeping thread (never
        inside a C-STORE handler), from the job store, so a failure there is retried."""
        self._sweeper.wake.set()

    def _sweep(self) -> bool:
        """Complete quiet series and route every complete unrouted one (receiver), and keep
        this process's other loops alive."""
        routed = 0
        if self.router is not None:
            self.assembler.sweep()
            routed = self.router.route_pending()
        if self.orchestrator is not None:
            self.orchestrator.ensure_running()
        if self.delivery is not None:
            self.delivery.ensure_running()
        for loop in (self._forwarding, self._retention):
            if loop is not None:
                loop.ensure_running()
        return routed > 0

    def start(self) -> None:
        if "receiver" in self.roles:
            if self._recovery_settle_s is not None:
                recover(self.spool, self.store, self._clock(), self._recovery_settle_s)
            ae, handlers = build_storage_ae(self.settings, self._handlers, self.peers.settings)
            node = self.settings.node
            for listener in listeners(self.settings):
                self._servers.append(start_storage_server(
                    ae, (node.bind, listener.port), handlers,
                    share_port=node.receiver_processes > 1, ssl_context=listener.ssl_context,
                    audit=self._handlers.audit))
                log.info("listening as %s on %s:%d (%s)", node.ae_title, node.bind,
                         listener.port, listener.kind)
        if self.orchestrator is not None:
            self.orchestrator.start()
        if self.delivery is not None:
            self.delivery.start()
        for loop in (self._forwarding, self._retention):
            if loop is not None:
                loop.start()
        if self._web is not None:
            self._web.start()
        if self._wakes:
            self.store.database.watch(self._wakes)
        self._sweeper.start()  # last: it supervises the other loops

    def stop(self) -> None:
        """No new associations; those in progress may finish (``node.shutdown_grace_s``, then
        they are aborted: what they did not get acknowledged, the sender still has); running
        jobs finish or are handed back; then the store closes."""
        started = time.monotonic()
        self._stopping.set()
        if self._web is not None:
            self._web.stop()
        if self._servers:
            for server in self._servers:
                server.shutdown()  # the listening socket closes: new associations refused
            deadline = time.monotonic() + self.settings.node.shutdown_grace_s
            # only established associations are waited for: a connection that never asked
            # for one (a port probe, a load balancer's health check) would hold the stop
            # until its ACSE timeout
            while (any(a.is_established for a in self._associations())
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            for association in self._associations():
                if association.is_established:
                    log.warning("stopping: aborting an association still open after %.0f s",
                                self.settings.node.shutdown_grace_s)
                association.abort()
        self._sweeper.stop(timeout_s=5)
        if self.orchestrator is not None:
            self.orchestrator.stop()
        if self.delivery is not None:
            self.delivery.stop()
        if self._retention is not None:
            self._retention.stop(timeout_s=30)
        if self._forwarding is not None and self._forwarder is not None:
            self._forwarding.stop(timeout_s=5)
            forward_remaining(self._forwarder)
        self.store.close()
        log.info("stopped (%s) in %.1f s", "+".join(sorted(self.roles)),
                 time.monotonic() - started)

    def _associations(self) -> list[Any]:
        return [a for server in self._servers for a in server.active_associations]

    def wait(self) -> None:
        """Block until :meth:`request_stop` is called (e.g. from a signal handler), keeping
        the housekeeping loop (which watches the other threads) alive meanwhile."""
        while not self._stopping.wait(1.0):
            self._sweeper.ensure_running()

    def request_stop(self) -> None:
        self._stopping.set()
