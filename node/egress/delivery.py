"""Delivers the outbox: C-STORE (one association per destination and pass) or STOW-RS.

Per object: success (and warnings) -> sent; a refusal the peer will repeat (SOP class or
presentation context not accepted, a permanent association rejection, 0xA9xx, 0xCxxx, HTTP
4xx) -> dead letter with the reason; out of resources, a peer that is down, a transient
association rejection, HTTP 401/403/408/429/5xx, or anything unexpected -> retried with
exponential backoff until ``egress.retry_window_s`` (24 h by default) has passed since the
first failure, then dead. Whatever happens with one destination, the others are served, and
every item ends its pass in a recorded state.

A destination that is back gets what waits for it promptly, whatever the backoff reached:
while all its items wait, one is tried every ``egress.probe_s`` (urgent first), and as soon
as one item for a destination is sent, every other item waiting for it is sent too.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from node.audit.trail import SERIOUS_FAILURE, Audit, no_audit
from node.dicom.scu import PeerRefused, PeerUnavailable, send_files
from node.domain import AuditEvent
from node.egress.notify import Notifier
from node.runtime import metrics
from node.runtime.loops import Loop
from node.settings import RESEARCH_PREFIX, Peer, Settings
from node.store.outbox import Outbox, OutboxItem

log = logging.getLogger(__name__)

_DIMSE_STATUS = re.compile(r"^0x([0-9A-Fa-f]{4})\b")


def classify(outcome: str) -> str:
    """``sent``, ``retry`` or ``dead`` for an outcome string (``0x0000``, ``refused: ...``)."""
    status_match = _DIMSE_STATUS.match(outcome)
    if status_match:
        status = int(status_match.group(1), 16)
        if status == 0 or 0xB000 <= status <= 0xBFFF:
            return "sent"
        if 0xA700 <= status <= 0xA7FF:
            return "retry"
        return "dead"
    lowered = outcome.lower()
    if lowered.startswith("refused") or "presentation context" in lowered:
        return "dead"
    return "retry"


class Delivery:
    def __init__(
        self, settings: Settings, outbox: Outbox, clock: Callable[[], float] = time.time,
        audit: Audit = no_audit,
        owns_store: bool = False,
        current: Callable[[], Settings] | None = None,
    ) -> None:
        """``owns_store``: no other sender uses the outbox, so leases found at start were a
        dead predecessor's and are released."""
        self._owns_store = owns_store
        self._settings = settings
        self._current = current or (lambda: settings)  # peers changed live
        self._audit = audit
        self._outbox = outbox
        self._clock = clock
        self._loop = Loop("egress", self.deliver_ready, settings.egress.interval_s)
        self._probed: dict[str, float] = {}  # destination -> when one item was last tried
        self._notifier = Notifier(outbox.store, settings.node.ae_title)
        self.wake = self._loop.wake

    def deliver_ready(self) -> int:
        """One pass over ready items; returns how many were sent."""
        sent = 0
        settings = self._current()
        self._probe_waiting(settings.egress.probe_s)
        for destination, items in self._outbox.ready(self._clock()).items():
            target = self._target(settings, destination)
            if target is None:
                for item in items:
                    self._outbox.dead(
                        item.id, f"no peer or notification named {destination!r} any more",
                        self._clock())
                continue
            delivered = self._deliver(target, items)
            self._probed[destination] = self._clock()
            if delivered:
                released = self._outbox.retry_now(destination=destination, now=self._clock())
                if released:
                    log.info("%s takes results again: %d waiting result(s) go now",
                             destination, len(released))
                    self._loop.wake.set()
            sent += delivered
        return sent

    def _probe_waiting(self, probe_s: float) -> None:
        """For each destination whose items all wait out a backoff, make its first item
        ready when none was tried for ``probe_s``."""
        now = self._clock()
        for destination, item_id in self._outbox.waiting(now).items():
            if now - self._probed.get(destination, 0.0) >= probe_s:
                self._probed[destination] = now
                self._outbox.retry_now([item_id], now)

    def _target(self, settings: Settings, destination: str) -> _Target | None:
        notification = settings.notification(destination)
        if notification is not None:
            url = notification.webhook or notification.fhir
            where = url or f"HL7 {notification.hl7}"
            address = _url_host(url) if url else str(notification.hl7).rpartition(":")[0]
            return _Target(notification.name, where, address, notification.name,
                           lambda items: self._notifier.send(notification, items,
                                                             settings.egress.timeout_s))
        if destination.startswith(RESEARCH_PREFIX):
            research = settings.research_destination(destination)
            if research is None:
                return None
            where = str(research.path) if research.path else f"research peer {research.peer}"
            return _Target(research.name, where, "", research.name,
                           lambda items: self._export(settings, research.name, items))
        peer = settings.peer_by_name(destination)
        if peer is None:
            return None
        return _Target(peer.name, _where(peer), _address(peer), peer.ae_title or peer.name,
                       lambda items: self._outcomes(peer, items))

    def _outcomes(self, peer: Peer, items: list[OutboxItem]) -> dict[str, str]:
        paths = [Path(i.path) for i in items]
        timeout_s = self._settings.egress.timeout_s
        if peer.dicomweb_url:
            from node.dicom.stow import stow

            return stow(peer, paths, timeout_s)
        try:
            report = send_files(paths, peer, self._settings.node.ae_title, timeout_s=timeout_s,
                                    node_tls=self._settings.node.tls)
        except PeerRefused as exc:
            return {i.path: f"refused: {exc}" for i in items}
        except PeerUnavailable as exc:
            return {i.path: f"unavailable: {exc}" for i in items}
        return {str(path): status for path, status in report.outcomes.items()}

    def _export(self, settings: Settings, name: str, items: list[OutboxItem]
                ) -> dict[str, str]:
        """A pipeline's research output: each item names a series, exported with its study's
        identity (the study is looked up) and its results when the entry includes them."""
        from node.research.export import DestinationFailed, Exporter, ExportError

        exporter = Exporter(settings, self._outbox.store, self._clock)
        outcomes: dict[str, str] = {}
        for item in items:
            series_uid = item.sop_instance_uid
            study = [uid for kind, uid in self._outbox.store.series_objects(series_uid)
                     if kind == "study"]
            if not study:
                outcomes[item.path] = "refused: the series is no longer kept"
                continue
            try:
                report = exporter.export(name, study, series_uid=series_uid)
            except ExportError as exc:
                outcomes[item.path] = f"refused: {exc}"
                continue
            except DestinationFailed as exc:
                outcomes[item.path] = str(exc)
                continue
            problems = {**report.refused, **report.failed}
            outcomes[item.path] = ("0x0000" if not problems else
                                   "refused: " + "; ".join(problems.values())[:300])
        return outcomes

    def _deliver(self, peer: _Target, items: list[OutboxItem]) -> int:
        try:
            with metrics.STAGE_SECONDS.labels("send").time():
                outcomes = peer.send(items)
        except Exception as exc:  # a defect or a surprise: every item still ends in a state
            log.exception("delivery to %s failed unexpectedly", peer.name)
            reason = f"not sent: internal error ({exc.__class__.__name__})"
            outcomes = {i.path: reason for i in items}
        sent: list[int] = []
        for item in items:
            try:
                if self._record(peer, item, outcomes.get(item.path, "not sent: no outcome")):
                    sent.append(item.id)
            except Exception:
                log.exception("result %s to %s: outcome not recorded", item.id, peer.name)
        if sent:
            log.info("delivered %d result object(s) to %s", len(sent), peer.name)
            self._audit("node", AuditEvent.RESULTS_SENT, f"{len(sent)} object(s) to {peer.name} "
                        f"({peer.where})", address=peer.address,
                        objects=[("peer", peer.identity), *self._objects(sent)])
        return len(sent)

    def _objects(self, item_ids: list[int]) -> list[tuple[str, str]]:
        try:
            return self._outbox.source_objects(item_ids)
        except Exception as exc:  # the audit line goes without them
            log.error("result sources not found (%s)", exc.__class__.__name__)
            return []

    def _record(self, peer: _Target, item: OutboxItem, outcome: str) -> int:
        verdict = classify(outcome)
        now = self._clock()
        policy = self._settings.egress.retry_policy
        metrics.RESULTS.labels(item.kind, verdict).inc()
        if verdict == "sent":
            self._outbox.sent(item.id, now)
            return 1
        if verdict == "retry" and policy.exhausted(item.first_failed_at, now):
            verdict, outcome = "dead", f"gave up after {policy.window_s:.0f} s: {outcome}"
        if verdict == "dead":
            log.error("result %s to %s: dead letter (%s)", item.sop_instance_uid, peer.name,
                      outcome)
            self._outbox.dead(item.id, outcome, now)
            self._audit("node", AuditEvent.DELIVERY_GIVEN_UP,
                        f"result {item.sop_instance_uid} to {peer.name}: {outcome}",
                        address=peer.address, outcome=SERIOUS_FAILURE,
                        objects=[("peer", peer.identity), *self._objects([item.id])])
            return 0
        delay = policy.delay(item.attempts + 1)
        log.warning("result %s to %s: %s; retry in %.0f s", item.sop_instance_uid, peer.name,
                    outcome, delay)
        self._outbox.retry(item.id, outcome, delay, now)
        return 0

    def start(self) -> None:
        if self._owns_store:
            held = self._outbox.release_leases()
            if held:
                log.warning("%d result(s) were being sent when the node stopped: sent again",
                            held)
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def ensure_running(self) -> bool:
        return self._loop.ensure_running()


@dataclass(frozen=True)
class _Target:
    """Where outbox items go: a peer (C-STORE, STOW-RS) or a notification channel."""

    name: str
    where: str
    address: str
    identity: str  # the audit message's participant: an AE title or a name
    send: Callable[[list[OutboxItem]], dict[str, str]]


def _url_host(url: str) -> str:
    return urlsplit(url).hostname or "" if url else ""


def _where(peer: Peer) -> str:
    return peer.dicomweb_url or f"{peer.ae_title}@{peer.host}:{peer.port}"


def _address(peer: Peer) -> str:
    if peer.dicomweb_url:
        return _url_host(peer.dicomweb_url)
    return peer.host or ""
