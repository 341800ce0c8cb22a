"""Where outbox items go: one :class:`Target` per destination kind, found by name. A peer
(C-STORE or STOW-RS) and a notification channel (webhook, FHIR, HL7) are built in; other
kinds (the research exports of :mod:`node.research.outbox`) are given to the sender by the
composition root as a :data:`TargetFinder`, so egress imports nothing above it.

Every target answers each item with an :class:`~node.domain.Outcome`; the sender records it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from node.dicom.scu import PeerRefused, PeerUnavailable, send_files
from node.domain import Outcome
from node.egress.notify import Notifier
from node.settings import Notification, Peer, Settings
from node.store.outbox import OutboxItem


class Target(Protocol):
    """A destination that takes outbox items."""

    @property
    def name(self) -> str: ...

    @property
    def where(self) -> str:
        """How an operator recognises it: a URL, ``AE@host:port``, a folder."""

    @property
    def address(self) -> str:
        """Its network address for the audit message ("" when none)."""

    @property
    def identity(self) -> str:
        """The audit message's participant: an AE title or a name."""

    def send(self, items: list[OutboxItem]) -> dict[str, Outcome]:
        """An outcome per item path (a missing one counts as not sent)."""


TargetFinder = Callable[[Settings, str], "Target | None"]


def status_outcome(status: str) -> Outcome:
    """The outcome of one C-STORE as :func:`node.dicom.scu.send_files` reports it: a status
    (``0x0000``) or why nothing was sent (retried, unless no presentation context fits)."""
    if status.startswith("0x"):
        try:
            return Outcome.of_dimse_status(int(status[2:6], 16))
        except ValueError:
            return Outcome.retry(status)
    if "presentation context" in status.lower():
        return Outcome.dead(status)
    return Outcome.retry(status)


@dataclass(frozen=True)
class PeerTarget:
    """A configured DICOM peer: C-STORE over one association, or STOW-RS."""

    peer: Peer
    settings: Settings

    @property
    def name(self) -> str:
        return self.peer.name

    @property
    def where(self) -> str:
        peer = self.peer
        return peer.dicomweb_url or f"{peer.ae_title}@{peer.host}:{peer.port}"

    @property
    def address(self) -> str:
        if self.peer.dicomweb_url:
            return url_host(self.peer.dicomweb_url)
        return self.peer.host or ""

    @property
    def identity(self) -> str:
        return self.peer.ae_title or self.peer.name

    def send(self, items: list[OutboxItem]) -> dict[str, Outcome]:
        return self.send_files([Path(i.path) for i in items])

    def send_files(self, paths: list[Path]) -> dict[str, Outcome]:
        """An outcome per path (as ``str``); research exports send their files this way."""
        timeout_s = self.settings.egress.timeout_s
        if self.peer.dicomweb_url:
            from node.dicom.stow import stow

            return stow(self.peer, paths, timeout_s)
        try:
            report = send_files(paths, self.peer, self.settings.node.ae_title,
                                timeout_s=timeout_s, node_tls=self.settings.node.tls)
        except PeerRefused as exc:
            return {str(p): Outcome.dead(f"refused: {exc}") for p in paths}
        except PeerUnavailable as exc:
            return {str(p): Outcome.retry(f"unavailable: {exc}") for p in paths}
        return {str(path): status_outcome(status) for path, status in report.outcomes.items()}


@dataclass(frozen=True)
class NotificationTarget:
    """A notification channel: a webhook, a FHIR server or an HL7 v2 receiver (a RIS)."""

    notification: Notification
    notifier: Notifier
    timeout_s: float

    @property
    def name(self) -> str:
        return self.notification.name

    @property
    def where(self) -> str:
        url = self.notification.webhook or self.notification.fhir
        return url or f"HL7 {self.notification.hl7}"

    @property
    def address(self) -> str:
        url = self.notification.webhook or self.notification.fhir
        return url_host(url) if url else str(self.notification.hl7).rpartition(":")[0]

    @property
    def identity(self) -> str:
        return self.notification.name

    def send(self, items: list[OutboxItem]) -> dict[str, Outcome]:
        return self.notifier.send(self.notification, items, self.timeout_s)


def builtin_targets(notifier: Notifier) -> list[TargetFinder]:
    """The destinations egress knows itself: notifications first, then peers."""

    def notification(settings: Settings, destination: str) -> Target | None:
        found = settings.notification(destination)
        return (None if found is None
                else NotificationTarget(found, notifier, settings.egress.timeout_s))

    def peer(settings: Settings, destination: str) -> Target | None:
        found = settings.peer_by_name(destination)
        return None if found is None else PeerTarget(found, settings)

    return [notification, peer]


def url_host(url: str) -> str:
    return urlsplit(url).hostname or "" if url else ""

