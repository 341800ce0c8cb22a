"""Delivers the outbox: C-STORE (one association per destination and pass) or STOW-RS.

Per object: success (and warnings) -> sent; a refusal the peer will repeat (SOP class or
presentation context not accepted, 0xA9xx, 0xCxxx, 0x01xx) -> dead letter with the reason; out
of resources, a peer that is down or an HTTP 5xx -> retried with exponential backoff, dead
after ``egress.attempts``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from node.egress.dimse import PeerRefused, PeerUnavailable, send_files
from node.settings import Peer, Settings
from node.store.outbox import Outbox, OutboxItem

log = logging.getLogger(__name__)


def classify(outcome: str) -> str:
    """``sent``, ``retry`` or ``dead`` for a C-STORE outcome string (``0x0000`` ...)."""
    if outcome.startswith("0x"):
        status = int(outcome, 16)
        if status == 0 or 0xB000 <= status <= 0xBFFF:
            return "sent"
        if 0xA700 <= status <= 0xA7FF:
            return "retry"
        return "dead"
    if outcome.startswith("refused") or "presentation context" in outcome.lower():
        return "dead"
    return "retry"


class Delivery:
    def __init__(
        self, settings: Settings, outbox: Outbox, clock: Callable[[], float] = time.time
    ) -> None:
        self._settings = settings
        self._outbox = outbox
        self._clock = clock
        self._stopping = threading.Event()
        self.wake = threading.Event()
        self._thread: threading.Thread | None = None

    def deliver_ready(self) -> int:
        """One pass over ready items; returns how many were sent."""
        sent = 0
        for destination, items in self._outbox.ready(self._clock()).items():
            try:
                peer = self._settings.peer(destination)
            except KeyError:
                for item in items:
                    self._outbox.dead(
                        item.id, f"no peer named {destination!r} any more", self._clock()
                    )
                continue
            sent += self._deliver(peer, items)
        return sent

    def _deliver(self, peer: Peer, items: list[OutboxItem]) -> int:
        if peer.dicomweb_url:
            from node.egress.stow import stow

            outcomes = stow(peer, [Path(i.path) for i in items], self._settings.egress.timeout_s)
        else:
            try:
                report = send_files(
                    [Path(i.path) for i in items],
                    peer,
                    self._settings.node.ae_title,
                    timeout_s=self._settings.egress.timeout_s,
                )
                outcomes = {str(path): status for path, status in report.outcomes.items()}
            except PeerRefused as exc:
                outcomes = {i.path: f"refused: {exc}" for i in items}
            except PeerUnavailable as exc:
                outcomes = {i.path: f"unavailable: {exc}" for i in items}
        sent = 0
        for item in items:
            outcome = outcomes.get(item.path, "not sent: no outcome")
            verdict = classify(outcome)
            now = self._clock()
            if verdict == "sent":
                self._outbox.sent(item.id, now)
                sent += 1
            elif verdict == "dead" or item.attempts + 1 >= self._settings.egress.attempts:
                log.error(
                    "result %s to %s: dead letter (%s)", item.sop_instance_uid, peer.name, outcome
                )
                self._outbox.dead(item.id, outcome, now)
            else:
                egress = self._settings.egress
                delay = min(egress.max_retry_s, egress.retry_s * 2**item.attempts)
                log.warning(
                    "result %s to %s: %s; retry in %.0f s",
                    item.sop_instance_uid,
                    peer.name,
                    outcome,
                    delay,
                )
                self._outbox.retry(item.id, outcome, delay, now)
        if sent:
            log.info("delivered %d result object(s) to %s", sent, peer.name)
        return sent

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="egress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.deliver_ready()
            except Exception:
                log.exception("delivery pass failed; retrying")
            self.wake.wait(self._settings.egress.interval_s)
            self.wake.clear()

    def stop(self) -> None:
        self._stopping.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
