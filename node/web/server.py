"""uvicorn serving the web role's app on ``node.http_bind:node.http_port``, in a thread of
the role's process, stopped with the node."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import ClassVar

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from node.web.app import create_app
from node.web.context import WebContext

log = logging.getLogger(__name__)
START_TIMEOUT_S = 30.0
HEADER_TIMEOUT_S = 10.0  # a request's line and headers, from connection or previous answer
WAITING_PER_ADDRESS = 32  # connections of one address still sending their headers
KEEP_ALIVE_S = 5


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's line and headers: a client
    that connects and says nothing, or trickles its headers (slow loris), is closed
    :data:`HEADER_TIMEOUT_S` after it connected or was last answered (uvicorn's keep-alive
    timer is reset by every byte that arrives, so it does not end a trickle). One address
    keeps at most :data:`WAITING_PER_ADDRESS` such connections: a new one closes its oldest,
    so a flood of them never keeps a client that sends its request at once waiting."""

    header_timeout_s = HEADER_TIMEOUT_S
    _header_timer: asyncio.TimerHandle | None = None
    # per client address, its connections waiting for headers, oldest first (one event loop)
    _waiting: ClassVar[dict[str, dict[HeaderTimeoutProtocol, None]]] = {}

    def _address(self) -> str:
        return str(self.client[0]) if self.client else ""

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)
        waiting = self._waiting.setdefault(self._address(), {})
        waiting[self] = None
        if len(waiting) > WAITING_PER_ADDRESS:  # the oldest of this address makes way
            oldest = next(iter(waiting))
            oldest._disarm_header_timer()
            oldest.transport.close()

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        waiting = self._waiting.get(self._address())
        if waiting is not None:
            waiting.pop(self, None)
            if not waiting:
                del self._waiting[self._address()]

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            log.debug("HTTP connection closed: no complete request headers within %.0f s",
                      self.header_timeout_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers were complete
            self._disarm_header_timer()

    def on_response_complete(self) -> None:
        self._arm_header_timer()  # the next request on this connection has as long
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


class WebServer:
    def __init__(self, context: WebContext) -> None:
        node = context.settings.node
        self.address = (node.http_bind, node.http_port)
        config = uvicorn.Config(create_app(context), host=node.http_bind, port=node.http_port,
                                log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5, http=HeaderTimeoutProtocol,
                                timeout_keep_alive=KEEP_ALIVE_S)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)
        self._failure: BaseException | None = None

    def _run(self) -> None:
        try:
            self._server.run()
        except BaseException as exc:  # uvicorn exits (SystemExit) when it cannot bind
            self._failure = exc

    def start(self) -> None:
        """Serve; :class:`OSError` when the port cannot be bound."""
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"HTTP server cannot listen on {self.address[0]}:"
                              f"{self.address[1]} ({self._failure or 'see the log'})")
            time.sleep(0.02)
        log.info("HTTP on %s:%d (health, metrics, admin API, STOW-RS)", *self.address)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
