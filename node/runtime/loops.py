"""One loop runner for every background role: sweeper/router, workers, delivery, heartbeat.

A :class:`Loop` runs ``step`` on its own thread until stopped. A pass that did work is
followed at once by the next; an idle one waits for ``interval_s`` or a :attr:`Loop.wake`.
An exception in a pass is logged and followed by a growing pause (never a spin), and the loop
goes on. ``prepare`` (e.g. importing torch) runs inside the same protection before the first
pass. :meth:`Loop.ensure_running` restarts a loop whose thread died anyway (a
``BaseException``), so a supervisor can keep every role alive.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from node.runtime.retry import RetryPolicy

log = logging.getLogger(__name__)


class Loop:
    def __init__(
        self,
        name: str,
        step: Callable[[], object],
        interval_s: float,
        prepare: Callable[[], None] | None = None,
        wake: threading.Event | None = None,
    ) -> None:
        self.name = name
        self._step = step
        self._interval_s = interval_s
        self._prepare = prepare
        self._prepared = prepare is None
        self._errors = RetryPolicy(first_s=interval_s, max_s=max(30.0, interval_s), window_s=0)
        self.wake = wake or threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._restart_lock = threading.Lock()
        self.restarts = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def ensure_running(self) -> bool:
        """Restart the thread if it died; ``True`` when it had to. A thread that has not begun
        yet (``start`` is under way on another thread) has not died: restarting it then would
        leave two threads running the same loop."""
        with self._restart_lock:
            thread = self._thread
            if (
                self._stopping.is_set()
                or thread is None
                or thread.ident is None  # not started yet
                or thread.is_alive()
            ):
                return False
            self.restarts += 1
            log.error("%s thread had died; restarting it (restart %d)", self.name, self.restarts)
            self.start()
            return True

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if not self._prepared and self._prepare is not None:
                    self._prepare()
                    self._prepared = True
                did_work = self._step()
                failures = 0
            except Exception:
                failures += 1
                pause = self._errors.delay(failures)
                log.exception("%s: pass failed; next try in %.1f s", self.name, pause)
                self._stopping.wait(pause)
                continue
            if did_work:
                continue
            self.wake.wait(self._interval_s)
            self.wake.clear()

    def stop(self, timeout_s: float = 30) -> None:
        self._stopping.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
