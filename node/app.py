"""Composition root: build the node's parts from settings, start and stop them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.domain import CompletionReason, SeriesKey
from node.egress.delivery import Delivery
from node.ingest.dimse import StorageHandlers, build_storage_ae
from node.loops import Loop
from node.pipeline import Orchestrator
from node.settings import Settings
from node.store.jobs import JobStore
from node.store.outbox import Outbox
from node.store.recovery import recover
from node.store.series import CompletionPolicy, SeriesAssembler
from node.store.spool import Spool
from node.workers import ProcessExecutor, make_backend

log = logging.getLogger(__name__)

SPOOL_DIR = "spool"
DB_FILE = "jobs.sqlite3"


def open_store(data_dir: Path) -> JobStore:
    return JobStore(data_dir / DB_FILE)


class Node:
    """A running node: Storage SCP, spool, job store and the series sweeper."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        data_dir = settings.node.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(data_dir / SPOOL_DIR, fsync=settings.node.fsync)
        self.store = open_store(data_dir)
        policy = CompletionPolicy(
            quiet_seconds=settings.series.quiet_seconds,
            complete_on_release=settings.series.complete_on_release,
            use_expected_count=settings.series.use_expected_count,
        )
        self.delivery = Delivery(settings, Outbox(self.store), clock)
        if settings.inference.isolation == "process":  # models never load in this process
            self.orchestrator = Orchestrator(
                settings, self.store, None, clock, on_outbox=self.delivery.wake.set,
                executor_factory=lambda index: ProcessExecutor(settings, f"worker-{index}"))
        else:
            self.orchestrator = Orchestrator(
                settings, self.store, make_backend(settings), clock,
                on_outbox=self.delivery.wake.set)
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
        )
        self._server: Any = None
        self._stopping = threading.Event()
        self._sweeper = Loop("series-sweeper", self._sweep, settings.series.sweep_interval_s)

    def _series_complete(self, key: SeriesKey, reason: CompletionReason) -> None:
        """Completion is durable already; routing happens on the sweeper thread (never inside
        a C-STORE handler), from the job store, so a failure there is retried."""
        self._sweeper.wake.set()

    def _sweep(self) -> bool:
        """Complete quiet series, route every complete unrouted one, and keep the worker and
        delivery threads alive."""
        self.assembler.sweep()
        routed = self.orchestrator.route_pending()
        self.orchestrator.ensure_running()
        self.delivery.ensure_running()
        return routed > 0

    def start(self) -> None:
        report = recover(self.spool, self.store, self._clock())
        log.info(
            "recovery: %d re-indexed, %d temporaries removed",
            report.reindexed,
            report.temporaries_removed,
        )
        ae, handlers = build_storage_ae(self.settings, self._handlers)
        node = self.settings.node
        self._server = ae.start_server(
            (node.bind, node.dicom_port), block=False, evt_handlers=handlers
        )
        self.orchestrator.start()
        self.delivery.start()
        self._sweeper.start()  # last: it supervises the other loops
        log.info("listening as %s on %s:%d (DICOM)", node.ae_title, node.bind, node.dicom_port)

    def stop(self) -> None:
        """No new associations; those in progress may finish (``node.shutdown_grace_s``, then
        they are aborted: what they did not get acknowledged, the sender still has); running
        jobs finish or are handed back; then the store closes."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()  # the listening socket closes: new associations refused
            deadline = time.monotonic() + self.settings.node.shutdown_grace_s
            while self._server.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
            for association in self._server.active_associations:
                log.warning("stopping: aborting an association still open after %.0f s",
                            self.settings.node.shutdown_grace_s)
                association.abort()
        self._sweeper.stop(timeout_s=5)
        self.orchestrator.stop()
        self.delivery.stop()
        self.store.close()

    def wait(self) -> None:
        """Block until :meth:`request_stop` is called (e.g. from a signal handler), keeping
        the sweeper (which watches the other threads) alive meanwhile."""
        while not self._stopping.wait(1.0):
            self._sweeper.ensure_running()

    def request_stop(self) -> None:
        self._stopping.set()
