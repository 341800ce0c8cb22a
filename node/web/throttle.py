"""Failed authentication on the HTTP port (a wrong token at sign-in, a wrong bearer token):
slowed per client address, logged once per burst, and audited (PS3.15 A.5.3.x User
Authentication, failure).

The first ``free`` failures of an address within ``window_s`` cost nothing; each one after
that locks the address out for twice as long as the previous (1 s, 2 s, 4 s ... at most
``max_lock_s``), answered with 429 and ``Retry-After`` without checking the token. A burst
(failures less than ``window_s`` apart) is one log line and one audit line at its start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from node.runtime.logs import printable

log = logging.getLogger(__name__)


@dataclass
class _Address:
    failures: int = 0
    last: float = 0.0
    locked_until: float = 0.0


class AuthFailures:
    def __init__(self, on_burst: Callable[[str, str], None], *, free: int = 5,
                 window_s: float = 60.0, max_lock_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, max_addresses: int = 10_000
                 ) -> None:
        self._on_burst = on_burst
        self._free = free
        self._window_s = window_s
        self._max_lock_s = max_lock_s
        self._clock = clock
        self._max_addresses = max_addresses
        self._addresses: dict[str, _Address] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> float:
        """Seconds ``address`` must wait before it may try again (0: it may)."""
        with self._lock:
            state = self._addresses.get(address)
            return max(0.0, state.locked_until - self._clock()) if state else 0.0

    def failed(self, address: str, where: str) -> None:
        """Record a failure of ``address`` (at ``where``: the route)."""
        now = self._clock()
        with self._lock:
            state = self._addresses.get(address)
            burst_starts = state is None or now - state.last > self._window_s
            if state is None or burst_starts:
                if len(self._addresses) >= self._max_addresses:
                    self._forget_quiet(now)
                state = self._addresses[address] = _Address()
            state.failures += 1
            state.last = now
            if state.failures > self._free:
                lock_s = min(self._max_lock_s, 2.0 ** (state.failures - self._free - 1))
                state.locked_until = now + lock_s
        if burst_starts:
            log.warning("HTTP authentication failed from %s (%s); further failures from it are "
                        "slowed and not logged until it has been quiet for %.0f s",
                        printable(address), printable(where), self._window_s)
            try:
                self._on_burst(address, where)
            except Exception as exc:  # the audit trail is down: the throttle still works
                log.error("authentication failure not audited: %s", exc.__class__.__name__)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._addresses.pop(address, None)

    def _forget_quiet(self, now: float) -> None:
        for address in [a for a, s in self._addresses.items()
                        if now - s.last > self._window_s and s.locked_until < now]:
            del self._addresses[address]
        while len(self._addresses) >= self._max_addresses:  # a flood of addresses
            self._addresses.pop(next(iter(self._addresses)))
