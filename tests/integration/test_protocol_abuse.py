"""Raw protocol abuse on the DICOM port (PS3.8 9.3 PDU framing): garbage, truncated and
oversized PDUs, P-DATA before any association, silent and idle connections. After each the
node is still up, closes the abusive connection by itself, and a normal echoscu and storescu
succeed."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import pytest

from tests.support.environment import ECHOSCU, ct_files, require, wait_for
from tests.support.node import NodeProcess, storescu

pytestmark = pytest.mark.integration

ACSE_TIMEOUT_S = 2


def _associate_rq_head(declared_length: int) -> bytes:
    """The start of an A-ASSOCIATE-RQ (PS3.8 9.3.2): type, length, version, called and
    calling AE titles, reserved; no items."""
    return (b"\x01\x00" + struct.pack(">I", declared_length) + b"\x00\x01\x00\x00"
            + b"AINODE".ljust(16) + b"STORESCU".ljust(16) + b"\x00" * 32)


ABUSES: dict[str, bytes] = {
    "garbage": bytes(range(256)) * 4,
    "truncated A-ASSOCIATE-RQ": _associate_rq_head(400),
    "a PDU announcing 4 GB": b"\x01\x00\xff\xff\xff\xff" + b"\x00" * 64,
    "P-DATA before an association": (b"\x04\x00" + struct.pack(">I", 10)
                                     + struct.pack(">I", 6) + b"\x01\x03" + b"\x00" * 4),
    "an unknown PDU type": b"\x09\x00\x00\x00\x00\x04abcd",
    "nothing at all": b"",
}


def _closed_by_peer(connection: socket.socket) -> bool:
    """Whether the node has closed (or reset) ``connection``: reads until EOF, answering
    bytes (an A-ABORT or A-ASSOCIATE-RJ) are fine."""
    try:
        while True:
            data = connection.recv(65536)
            if not data:
                return True
    except TimeoutError:
        return False
    except OSError:  # reset
        return True


def _healthy(node: NodeProcess) -> None:
    import subprocess

    from tests.support.environment import DCMTK_ENV

    echo = subprocess.run([ECHOSCU, "-aet", "ECHOSCU", "-aec", "AINODE", "127.0.0.1",
                           str(node.port)], env=DCMTK_ENV, capture_output=True, text=True,
                          timeout=30)
    assert echo.returncode == 0, echo.stderr
    stored = storescu(node, ct_files()[0])
    assert stored.returncode == 0, stored.stderr
    assert node.alive


@pytest.fixture
def abused_node(node_factory: Any) -> NodeProcess:
    require(ECHOSCU)
    return node_factory(node={"acse_timeout_s": ACSE_TIMEOUT_S, "network_timeout_s": 5,
                              "dimse_timeout_s": 5}).start()  # type: ignore[no-any-return]


@pytest.mark.parametrize("abuse", sorted(ABUSES))
def test_abusive_bytes_end_that_connection_only(abused_node: NodeProcess, abuse: str) -> None:
    connection = socket.create_connection(("127.0.0.1", abused_node.port))
    try:
        if ABUSES[abuse]:
            connection.sendall(ABUSES[abuse])
        _healthy(abused_node)  # served while the abusive connection is still open
        connection.settimeout(ACSE_TIMEOUT_S + 8)
        assert _closed_by_peer(connection), f"{abuse}: the node kept the connection open"
    finally:
        connection.close()
    _healthy(abused_node)
    assert "Traceback" not in abused_node.log()


def test_a_hundred_idle_connections_are_dropped_and_the_node_serves_again(
        abused_node: NodeProcess) -> None:
    """More idle connections than node.max_associations (16): new associations may be refused
    while they last (A-ASSOCIATE-RJ, local limit exceeded), and every idle one is closed after
    the ACSE timeout, after which the node serves normally."""
    idle = [socket.create_connection(("127.0.0.1", abused_node.port)) for _ in range(100)]
    try:
        started = time.monotonic()
        for connection in idle:
            connection.settimeout(max(0.1, ACSE_TIMEOUT_S + 15 - (time.monotonic() - started)))
        assert all(_closed_by_peer(c) for c in idle), "idle connections were kept open"
    finally:
        for connection in idle:
            connection.close()
    assert wait_for(lambda: abused_node.alive, 1)
    _healthy(abused_node)
    assert "Traceback" not in abused_node.log()


def _item(kind: int, value: bytes) -> bytes:
    return bytes([kind, 0]) + struct.pack(">H", len(value)) + value


def _echo_association_rq() -> bytes:
    """A whole A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing Verification, max PDU 16 KB."""
    context = (bytes([1, 0, 0, 0]) + _item(0x30, b"1.2.840.10008.1.1")
               + _item(0x40, b"1.2.840.10008.1.2"))
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.9.7")
    items = (_item(0x10, b"1.2.840.10008.3.1.1.1") + _item(0x20, context) + _item(0x50, user))
    body = (b"\x00\x01\x00\x00" + b"AINODE".ljust(16) + b"ECHOSCU".ljust(16) + b"\x00" * 32
            + items)
    return b"\x01\x00" + struct.pack(">I", len(body)) + body


def _echo_rq(message_id: int) -> bytes:
    """A C-ECHO-RQ (PS3.7 9.3.5) in one P-DATA-TF: implicit VR little endian command set."""
    def element(group: int, elem: int, value: bytes) -> bytes:
        return struct.pack("<HHI", group, elem, len(value)) + value

    rest = (element(0, 0x0002, b"1.2.840.10008.1.1\x00") + element(0, 0x0100, b"\x30\x00")
            + element(0, 0x0110, struct.pack("<H", message_id & 0xFFFF))
            + element(0, 0x0800, b"\x01\x01"))
    command = element(0, 0x0000, struct.pack("<I", len(rest))) + rest
    pdv = struct.pack(">I", len(command) + 2) + b"\x01\x03" + command
    return b"\x04\x00" + struct.pack(">I", len(pdv)) + pdv


def test_a_client_that_stops_reading_responses_is_dropped(abused_node: NodeProcess) -> None:
    """A caller asks for C-ECHO after C-ECHO and never reads an answer. Once the node's send
    buffer is full its association cannot send; node.network_timeout_s ends that association
    (the caller's next send fails), and others are served meanwhile and after."""
    connection = socket.socket()
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    connection.connect(("127.0.0.1", abused_node.port))
    try:
        connection.settimeout(10)
        connection.sendall(_echo_association_rq())
        assert connection.recv(1)[:1] == b"\x02", "A-ASSOCIATE-AC expected"
        connection.settimeout(1)
        burst = b"".join(_echo_rq(n) for n in range(1, 101))
        sent, dropped, checked = 0, False, False
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                connection.sendall(burst)
                sent += 100
            except TimeoutError:
                if not checked:  # the node is not reading: serve others meanwhile
                    _healthy(abused_node)
                    checked = True
            except OSError:  # reset or broken pipe: the node dropped us
                dropped = True
                break
        assert dropped, f"the node kept an association that read nothing ({sent} echoes)"
        assert checked
    finally:
        connection.close()
    _healthy(abused_node)
    assert "Traceback" not in abused_node.log()


def _associate(port: int, calling: bytes = b"ECHOSCU") -> socket.socket:
    """An association (Verification) held open and idle."""
    connection = socket.create_connection(("127.0.0.1", port))
    connection.settimeout(10)
    connection.sendall(_echo_association_rq().replace(b"ECHOSCU".ljust(16),
                                                      calling.ljust(16)))
    assert connection.recv(1)[:1] == b"\x02", "A-ASSOCIATE-AC expected"
    return connection


def test_silent_sockets_and_idle_associations_do_not_keep_modalities_out(
        node_factory: Any) -> None:
    """Issue 24 §2: 20 connections that never send an A-ASSOCIATE-RQ and 4 idle associations
    held open; with node.max_associations 5 a real storescu of the CT is accepted at once
    (the silent ones never take a slot). Silent ones are closed within the pre-association
    timeout, a closed one frees everything at once."""
    node: NodeProcess = node_factory(node={"max_associations": 5, "acse_timeout_s": 30,
                                           "network_timeout_s": 60}).start()
    silent = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(20)]
    idle: list[socket.socket] = []
    try:
        idle = [_associate(node.port) for _ in range(4)]
        started = time.monotonic()
        stored = storescu(node, *ct_files())
        assert stored.returncode == 0, stored.stderr
        print(f"storescu of {len(ct_files())} CT slices beside 20 silent sockets and 4 idle "
              f"associations: accepted, done in {time.monotonic() - started:.1f} s")
        assert "Local Limit Exceeded" not in stored.stderr
        assert len(node.stored_files()) == len(ct_files())
        for connection in silent:
            connection.settimeout(max(0.1, 15 - (time.monotonic() - started)))
        assert all(_closed_by_peer(c) for c in silent), "silent connections were kept open"
        print(f"silent sockets all closed {time.monotonic() - started:.1f} s after storescu "
              "began")
    finally:
        for connection in silent + idle:
            connection.close()
    assert node.alive and "Traceback" not in node.log()


def test_an_idle_association_is_released_after_the_network_timeout(node_factory: Any
                                                                   ) -> None:
    node: NodeProcess = node_factory(node={"network_timeout_s": 3}).start()
    connection = _associate(node.port)
    try:
        connection.settimeout(20)
        assert _closed_by_peer(connection)
    finally:
        connection.close()
    _healthy(node)


@pytest.mark.parametrize("calling", [b"EVIL\nFAKE LINE", b"EVIL\x1b[2J", b"BACK\\SLASH"])
def test_control_characters_in_an_ae_title_are_one_escaped_line_and_audited(
        abused_node: NodeProcess, calling: bytes) -> None:
    connection = socket.create_connection(("127.0.0.1", abused_node.port))
    try:
        connection.settimeout(10)
        connection.sendall(_echo_association_rq().replace(b"ECHOSCU".ljust(16),
                                                          calling.ljust(16)))
        answer = connection.recv(10)
    finally:
        connection.close()
    assert answer[:1] == b"\x03" and answer[7:10] == b"\x01\x01\x03", answer  # RJ, calling AE
    log = abused_node.log()
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "control characters" in line]
    assert len(lines) == 1, lines
    assert "\x1b" not in log and "FAKE LINE" not in log.replace("\\nFAKE LINE", "")
    assert wait_for(lambda: abused_node.query(
        "SELECT COUNT(*) FROM audit WHERE action='association rejected'") == [(1,)], 10)
    _healthy(abused_node)
