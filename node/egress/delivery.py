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
import time
from collections.abc import Callable, Sequence

from node.audit.trail import SERIOUS_FAILURE, Audit, no_audit
from node.domain import AuditEvent, Outcome
from node.egress.notify import Notifier
from node.egress.rejections import RejectionNotes
from node.egress.targets import Target, TargetFinder, builtin_targets
from node.runtime import metrics
from node.runtime.loops import Loop
from node.settings import Settings
from node.store.outbox import Outbox, OutboxItem

log = logging.getLogger(__name__)

class Delivery:
    def __init__(
        self, settings: Settings, outbox: Outbox, clock: Callable[[], float] = time.time,
        audit: Audit = no_audit,
        owns_store: bool = False,
        current: Callable[[], Settings] | None = None,
        targets: Sequence[TargetFinder] = (),
    ) -> None:
        """``owns_store``: no other sender uses the outbox, so leases found at start were a
        dead predecessor's and are released. ``targets``: finders of destination kinds beyond
        the built-in peers and notifications (tried first)."""
        self._owns_store = owns_store
        self._settings = settings
        self._current = current or (lambda: settings)  # peers changed live
        self._audit = audit
        self._outbox = outbox
        self._clock = clock
        self._loop = Loop("egress", self.deliver_ready, settings.egress.interval_s)
        self._probed: dict[str, float] = {}  # destination -> when one item was last tried
        self._targets = [*targets,
                         *builtin_targets(Notifier(outbox.store, settings.node.ae_title))]
        self._notes = RejectionNotes(outbox.store, self._current, clock)
        self.wake = self._loop.wake

    def deliver_ready(self) -> int:
        """One pass over ready items; returns how many were sent."""
        sent = 0
        settings = self._current()
        self._notes.write_pending()  # withdrawn results: their rejection notes join the outbox
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

    def _target(self, settings: Settings, destination: str) -> Target | None:
        for find in self._targets:
            target = find(settings, destination)
            if target is not None:
                return target
        return None

    def _deliver(self, peer: Target, items: list[OutboxItem]) -> int:
        try:
            with metrics.STAGE_SECONDS.labels("send").time():
                outcomes = peer.send(items)
        except Exception as exc:  # a defect or a surprise: every item still ends in a state
            log.exception("delivery to %s failed unexpectedly", peer.name)
            reason = Outcome.retry(f"not sent: internal error ({exc.__class__.__name__})")
            outcomes = {i.path: reason for i in items}
        sent: list[int] = []
        missing = Outcome.retry("not sent: no outcome")
        for item in items:
            try:
                if self._record(peer, item, outcomes.get(item.path, missing)):
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

    def _record(self, peer: Target, item: OutboxItem, result: Outcome) -> int:
        verdict, outcome = result.verdict, result.reason
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
