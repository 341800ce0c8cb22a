"""DICOM TLS (PS3.15 Annex B secure transport connection profiles, BCP 195): the SSL contexts of the
Storage SCP and of the SCU, and what is logged of a secured connection.

TLS 1.2 is the oldest version either side accepts. The server asks for a client certificate
when ``node.tls.ca`` is set and refuses a connection without one when
``require_client_cert``; the client verifies the peer's certificate and host name against the
peer's ``tls_ca`` (else the system's authorities) and presents this node's certificate.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from node.settings import Peer, TlsSection

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def server_context(tls: TlsSection) -> ssl.SSLContext:
    """The context the DICOM port(s) wrap each accepted connection with."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.ca is not None:
        context.load_verify_locations(cafile=str(tls.ca))
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(peer: Peer, tls: TlsSection | None) -> ssl.SSLContext:
    """The context for an association with ``peer``: its certificate checked against its
    ``tls_ca`` (else the system's authorities), this node's certificate presented when it has
    one."""
    context = ssl.create_default_context(
        cafile=str(peer.tls_ca) if peer.tls_ca is not None else None)
    context.minimum_version = MINIMUM_VERSION
    if tls is not None and tls.cert is not None and tls.key is not None:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    return context


def _subject(certificate: Any) -> str:
    """A certificate subject (as ``SSLSocket.getpeercert`` gives it) as ``CN=...,O=...``."""
    short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
             "countryName": "C"}
    parts = [f"{short.get(name, name)}={value}"
             for rdn in certificate.get("subject", ()) for name, value in rdn]
    return ",".join(parts) or "(empty subject)"


def describe(connection: socket.socket | None) -> str | None:
    """``TLSv1.3, client certificate CN=...`` for a TLS connection; ``None`` for plain TCP."""
    if not isinstance(connection, ssl.SSLSocket):
        return None
    certificate = connection.getpeercert()
    who = f"certificate {_subject(certificate)}" if certificate else "no certificate"
    return f"{connection.version()}, {who}"


def handshake(connection: ssl.SSLSocket, timeout_s: float) -> None:
    """Complete the server side of the handshake within ``timeout_s`` (raises ``OSError``,
    ``ssl.SSLError`` included, when it fails or times out); the socket's timeout is as
    before after."""
    previous = connection.gettimeout()
    connection.settimeout(timeout_s)
    connection.do_handshake()
    connection.settimeout(previous)


