"""uvicorn serving the web role's app on ``node.http_bind:node.http_port``, in a thread of
the role's process, stopped with the node."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

from node.web.app import create_app
from node.web.context import WebContext

log = logging.getLogger(__name__)
START_TIMEOUT_S = 30.0


class WebServer:
    def __init__(self, context: WebContext) -> None:
        node = context.settings.node
        self.address = (node.http_bind, node.http_port)
        config = uvicorn.Config(create_app(context), host=node.http_bind, port=node.http_port,
                                log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5)
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
