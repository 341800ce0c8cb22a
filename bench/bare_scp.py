#!/usr/bin/env python3
"""pynetdicom's own ceiling: a Storage SCP that acknowledges every C-STORE and keeps nothing.

The same AE set-up as the node's receiver (every storage SOP class with every transfer syntax,
unlimited PDU size, the node's reactor wake-ups), listening with ``SO_REUSEPORT`` so several
can share a port. bench/ingest.py runs it as the ``pynetdicom_bare`` peer: what the node
could reach if storing, indexing and fsync cost nothing.

    .venv/bin/python bench/bare_scp.py PORT
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer

from node.ingest import receive_path


class SharedPortServer(ThreadedAssociationServer):
    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def acknowledge(event: Any) -> int:
    return 0x0000


def main() -> None:
    receive_path.install()
    ae = AE(ae_title="AINODE")
    ae.maximum_pdu_size = 0
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.make_server(("127.0.0.1", int(sys.argv[1])),
                            evt_handlers=[(evt.EVT_C_STORE, acknowledge)],
                            server_class=SharedPortServer)
    server.serve_forever()


if __name__ == "__main__":
    main()
