"""The DICOM port's door (PS3.8 9.3.2): what a TCP connection must do before pynetdicom
gives it an association thread and an association slot.

A connection that has not sent an A-ASSOCIATE-RQ does not count against
``node.max_associations``: it waits here, at most ``timeout_s``, for the request's first 74
bytes (PDU header, protocol version, called and calling AE titles). Then:

- the client closed: the connection goes at once (its slot was never taken);
- silence past ``timeout_s``: closed (counted as ``rejected{reason="silent"}``);
- AE titles with control characters or a backslash (PS3.5 6.2, AE VR): answered with
  A-ASSOCIATE-RJ (rejected permanent, service user, calling or called AE title not
  recognised), one escaped log line, audited as a rejection and counted
  (``reason="bad_ae_title"``); pynetdicom would fail to decode them with a traceback;
- otherwise (an A-ASSOCIATE-RQ or bytes pynetdicom will refuse itself) it goes on.

One address keeps at most ``per_address`` connections waiting: a new one closes its oldest,
so reconnecting silent sockets cannot keep a modality's prompt request out. Over TLS the
handshake and the first record must arrive within ``timeout_s``; the titles are then
checked by pynetdicom (whose decode failure :mod:`node.runtime.logs` turns into one line).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections import OrderedDict

from node.audit.trail import MINOR_FAILURE, Audit, no_audit
from node.domain import AuditEvent
from node.runtime import metrics
from node.runtime.logs import printable

log = logging.getLogger(__name__)

A_ASSOCIATE_RQ = 0x01
RQ_HEAD_BYTES = 74  # type, reserved, length (4), version (2), reserved (2), AE titles (2 x 16)
PER_ADDRESS = 16


def associate_rj(reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4): rejected-permanent (1) by the service user (1)
    for ``reason`` (3 calling AE title, 7 called AE title not recognised)."""
    return b"\x03\x00" + struct.pack(">I", 4) + bytes([0, 1, 1, reason])


def _bad_title(raw: bytes) -> bool:
    return any(b < 0x20 or b == 0x7F or b == 0x5C for b in raw.rstrip(b" \x00"))


class PreAssociationGate:
    def __init__(self, timeout_s: float, per_address: int = PER_ADDRESS,
                 audit: Audit = no_audit) -> None:
        self.timeout_s = timeout_s
        self._per_address = per_address
        self._audit = audit
        self._waiting: dict[str, OrderedDict[socket.socket, None]] = {}
        self._lock = threading.Lock()

    # -- bookkeeping of waiting connections ------------------------------------------------
    def _enter(self, connection: socket.socket, address: str) -> None:
        with self._lock:
            waiting = self._waiting.setdefault(address, OrderedDict())
            waiting[connection] = None
            evicted = (waiting.popitem(last=False)[0] if len(waiting) > self._per_address
                       else None)
        if evicted is not None:  # its thread wakes to an EOF and ends
            metrics.ASSOCIATIONS.labels("rejected", "too_many_waiting").inc()
            with contextlib.suppress(OSError):
                evicted.shutdown(socket.SHUT_RDWR)

    def _leave(self, connection: socket.socket, address: str) -> None:
        with self._lock:
            waiting = self._waiting.get(address)
            if waiting is not None:
                waiting.pop(connection, None)
                if not waiting:
                    del self._waiting[address]

    # -- the door ----------------------------------------------------------------------------
    def admit(self, connection: socket.socket, address: str) -> bool:
        """Wait for the association request; ``True``: hand the connection to pynetdicom,
        ``False``: it has been answered or is to be closed."""
        self._enter(connection, address)
        try:
            if isinstance(connection, ssl.SSLSocket):
                return self._readable(connection)
            return self._plain(connection, address)
        finally:
            self._leave(connection, address)

    def _readable(self, connection: ssl.SSLSocket) -> bool:
        if connection.pending():
            return True
        try:
            ready, _, _ = select.select([connection], [], [], self.timeout_s)
        except (OSError, ValueError):
            return False
        if not ready:
            metrics.ASSOCIATIONS.labels("rejected", "silent").inc()
        return bool(ready)

    def _peek(self, connection: socket.socket, size: int, deadline: float) -> bytes | None:
        """The first ``size`` bytes without taking them (fewer: the client stopped or
        closed), ``None`` on timeout."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        connection.settimeout(remaining)
        try:
            return connection.recv(size, socket.MSG_PEEK | socket.MSG_WAITALL)
        except TimeoutError:
            return None
        except OSError:
            return b""

    def _plain(self, connection: socket.socket, address: str) -> bool:
        deadline = time.monotonic() + self.timeout_s
        previous = connection.gettimeout()
        try:
            first = self._peek(connection, 1, deadline)
            if first is None:
                metrics.ASSOCIATIONS.labels("rejected", "silent").inc()
                log.debug("connection from %s said nothing in %.0f s: closed", address,
                          self.timeout_s)
                return False
            if not first:
                return False  # closed by the client: nothing to answer
            if first[0] != A_ASSOCIATE_RQ:
                return True  # pynetdicom answers what is not an association request
            head = self._peek(connection, RQ_HEAD_BYTES, deadline)
            if head is None:
                metrics.ASSOCIATIONS.labels("rejected", "silent").inc()
                log.info("connection from %s sent an incomplete A-ASSOCIATE-RQ: closed",
                         address)
                return False
            if len(head) < RQ_HEAD_BYTES:
                return len(head) > 0  # closed part-way: pynetdicom sees the end
            return self._titles_acceptable(connection, address, head)
        finally:
            connection.settimeout(previous)

    def _titles_acceptable(self, connection: socket.socket, address: str, head: bytes
                           ) -> bool:
        called, calling = head[10:26], head[26:42]
        bad = "calling" if _bad_title(calling) else "called" if _bad_title(called) else None
        if bad is None:
            return True
        shown = printable(calling.decode("latin-1").strip(" \x00"))
        log.warning("association from %s rejected: %s AE title has control characters or a "
                    "backslash (calling %s, called %s)", address, bad, shown,
                    printable(called.decode("latin-1").strip(" \x00")))
        metrics.ASSOCIATIONS.labels("rejected", "bad_ae_title").inc()
        with contextlib.suppress(OSError):
            connection.sendall(associate_rj(3 if bad == "calling" else 7))
        self._audit(shown[:64], AuditEvent.ASSOCIATION_REJECTED,
                    f"from {address}: {bad} AE title has control characters or a backslash",
                    address=address, outcome=MINOR_FAILURE)
        return False
