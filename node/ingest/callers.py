"""Who may open an association: calling AE titles from ``peers`` and, with
``node.check_caller_host``, only from that peer's addresses (``peers[].hosts``, else its
``host``). A refused caller gets A-ASSOCIATE-RJ "calling AE title not recognised" (PS3.8
9.3.4), as pynetdicom gives an unknown AE title.

pynetdicom checks the calling AE title against ``AE.require_calling_aet`` while it negotiates,
on the association's own thread; :class:`CallerCheckingAE` answers that list for the
association being negotiated, so the address is checked at the same point and with the same
rejection.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association

from node.audit.trail import MINOR_FAILURE, Audit
from node.domain import AuditEvent
from node.runtime import metrics
from node.settings import Settings

log = logging.getLogger(__name__)

NOBODY = ["\x7fnobody"]  # a list no calling AE title matches: the association is rejected


def _networks(host: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """An address or network as written, else what the host name resolves to now."""
    try:
        return [ipaddress.ip_network(host, strict=False)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return [ipaddress.ip_network(info[4][0]) for info in infos]


class CallerPolicy:
    """The decision for one calling AE title from one address."""

    def __init__(self, settings: Settings,
                 current: Callable[[], Settings] | None = None) -> None:
        """``current``: the settings with the peers in effect now (peers changed live);
        by default ``settings``'."""
        self._accept_unknown = settings.node.accept_unknown_callers
        self._check_host = settings.node.check_caller_host
        self._current = current or (lambda: settings)

    def refusal(self, ae_title: str, address: str) -> str | None:
        """Why ``ae_title`` calling from ``address`` is refused, or ``None``."""
        hosts: list[str] | None = None
        for peer in self._current().peers:
            if peer.ae_title == ae_title.strip():
                hosts = [*(hosts or []), *(peer.hosts or [peer.host])]
        if hosts is None:
            return None if self._accept_unknown else "calling AE title not in peers"
        if not self._check_host:
            return None
        try:
            caller = ipaddress.ip_address(address)
        except ValueError:
            return f"source address {address!r} unreadable"
        if any(caller in network for host in hosts for network in _networks(host)):
            return None
        return f"not from the peer's configured hosts ({', '.join(hosts)})"


class CallerCheckingAE(AE):
    """An AE whose ``require_calling_aet`` is decided per association by a policy."""

    caller_policy: CallerPolicy | None = None

    @property
    def require_calling_aet(self) -> list[str]:
        association = threading.current_thread()
        if self.caller_policy is None or not isinstance(association, Association):
            return list(self._require_calling_aet)
        requestor = association.requestor
        try:
            refused = self.caller_policy.refusal(str(requestor.ae_title),
                                                 str(requestor.address))
        except Exception:  # answered, never left hanging: refused when it cannot be decided
            log.exception("caller check failed; association refused")
            return NOBODY
        return NOBODY if refused else []

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        AE.require_calling_aet.fset(self, ae_titles)  # type: ignore[attr-defined]


def log_rejection(policy: CallerPolicy, audit: Audit, event: Any) -> None:
    """One log and one audit line per rejected association: who, from where, why."""
    requestor = event.assoc.requestor
    ae_title, address = str(requestor.ae_title).strip(), str(requestor.address)
    why = policy.refusal(ae_title, address) or "called AE title or association limit"
    log.warning("association from %r at %s rejected: %s", ae_title, address, why)
    metrics.ASSOCIATIONS.labels("rejected", metrics.rejection_reason(why)).inc()
    audit(ae_title, AuditEvent.ASSOCIATION_REJECTED, f"from {address}: {why}", address=address,
          outcome=MINOR_FAILURE)
