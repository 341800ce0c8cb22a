"""The audit trail reaches a syslog collector as DICOM audit messages (PS3.15 A.5): a local
receiver on UDP and on TCP parses each RFC 5424 frame and its XML while dcmtk talks to a real
node."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.support.environment import DCMTK_ENV, STORESCU, ct_files, free_port, require, wait_for
from tests.support.node import storescu

pytestmark = pytest.mark.integration

ECHOSCU = "/usr/bin/echoscu"
FRAME = re.compile(rb"<(\d+)>1 (\S+) (\S+) ainode (\d+) IHE\+RFC-3881 - \xef\xbb\xbf(.*)", re.S)


class Collector:
    """A syslog receiver: every frame checked against RFC 5424 and parsed as XML."""

    def __init__(self, transport: str, port: int) -> None:
        self.transport = transport
        self.port = port
        self.messages: list[ET.Element] = []
        self.raw: list[bytes] = []
        self._stop = threading.Event()
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self._socket = socket.socket(socket.AF_INET, kind)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.settimeout(0.2)
        self._socket.bind(("127.0.0.1", port))
        if transport == "tcp":
            self._socket.listen()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _take(self, frame: bytes) -> None:
        match = FRAME.fullmatch(frame)
        assert match is not None, frame[:200]
        self.raw.append(frame)
        self.messages.append(ET.fromstring(match[5]))

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                if self.transport == "udp":
                    self._take(self._socket.recv(65535))
                    continue
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._read_stream, args=(connection,), daemon=True).start()

    def _read_stream(self, connection: socket.socket) -> None:
        """RFC 6587 octet counting: ``LENGTH SP FRAME``, repeated."""
        buffer = b""
        with connection:
            connection.settimeout(0.2)
            while not self._stop.is_set():
                try:
                    chunk = connection.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buffer += chunk
                while b" " in buffer:
                    length, _, rest = buffer.partition(b" ")
                    if len(rest) < int(length):
                        break
                    self._take(rest[:int(length)])
                    buffer = rest[int(length):]

    def events(self, code: str, type_code: str | None = None) -> list[ET.Element]:
        found = []
        for message in list(self.messages):
            event = message.find("EventIdentification")
            assert event is not None
            event_id = event.find("EventID")
            types = [t.get("csd-code") for t in event.findall("EventTypeCode")]
            if event_id is not None and event_id.get("csd-code") == code and (
                    type_code is None or type_code in types):
                found.append(message)
        return found

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()


@pytest.fixture
def collectors() -> Iterator[list[Collector]]:
    opened: list[Collector] = []
    yield opened
    for collector in opened:
        collector.close()


def _participants(message: ET.Element) -> dict[str, dict[str, str]]:
    return {p.get("UserID", ""): dict(p.attrib) for p in message.findall("ActiveParticipant")}


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_audit_messages_reach_a_syslog_collector(node_factory: Any,
                                                 collectors: list[Collector],
                                                 transport: str) -> None:
    require(STORESCU)
    port = free_port()
    collector = Collector(transport, port)
    collectors.append(collector)
    node = node_factory(audit={"syslog": f"127.0.0.1:{port}", "transport": transport,
                               "interval_s": 0.2, "enterprise_site": "Test Hospital"}).start()
    files = ct_files()[:5]
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    result = storescu(node, *files)
    assert result.returncode == 0, result.stderr
    refused = subprocess.run([ECHOSCU, "-aet", "INTRUDER", "-aec", "AINODE", "127.0.0.1",
                              str(node.port)], env=DCMTK_ENV, capture_output=True, text=True,
                             timeout=30)
    assert refused.returncode != 0
    # a peer added live is a configuration change: a Security Alert naming who made it
    added = subprocess.run([str(Path(sys.executable).parent / "ainode"), "peers", "add",
                            "ARCHIVE2", "--ae-title", "ARCHIVE2", "--host", "127.0.0.1",
                            "--port", "11199", "--config", str(node.config_path)],
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr

    assert wait_for(lambda: collector.events("110100", "110120"), 30), node.log()[-2000:]
    def by_a_person(message: ET.Element) -> bool:  # not the node's own configuration check
        return any(p.get("UserIsRequestor") == "true" and p.get("UserID") != node.ae_title
                   for p in message.findall("ActiveParticipant"))

    changes = wait_for(lambda: [m for m in collector.events("110113", "110131")
                                if by_a_person(m)], 30)
    assert changes, (collector.raw, node.log()[-2000:])
    (change,) = changes
    detail = change.find("EventIdentification")
    assert detail is not None and detail.get("EventOutcomeIndicator") == "0"
    transfers = wait_for(lambda: collector.events("110104"), 30)
    assert transfers, (collector.raw, node.log()[-2000:])
    (transfer,) = transfers
    caller = _participants(transfer)["STORESCU"]
    assert caller["NetworkAccessPointID"] == "127.0.0.1" and caller["UserIsRequestor"] == "true"
    (study,) = transfer.findall("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == str(source.StudyInstanceUID)
    audit_source = transfer.find("AuditSourceIdentification")
    assert audit_source is not None
    assert audit_source.get("AuditEnterpriseSiteID") == "Test Hospital"

    alerts = wait_for(lambda: collector.events("110113", "110126"), 30)
    assert alerts, (collector.raw, node.log()[-2000:])
    intruder = _participants(alerts[0])["INTRUDER"]
    assert intruder["NetworkAccessPointID"] == "127.0.0.1"
    event = alerts[0].find("EventIdentification")
    assert event is not None and event.get("EventOutcomeIndicator") == "4"

    node.stop()
    assert wait_for(lambda: collector.events("110100", "110121"), 30), node.log()[-2000:]
    identifying = [str(v).encode() for v in (source.PatientName, source.PatientID,
                                             source.get("PatientBirthDate", "")) if str(v)]
    assert not [f for f in collector.raw if any(v in f for v in identifying)]
    # every line forwarded exactly once: each distinct message once
    assert len(collector.raw) == len(set(collector.raw))
    assert node.query("SELECT COUNT(*) FROM audit WHERE forwarded != 1") == [(0,)]


def test_lines_wait_for_a_tcp_collector_that_is_down_and_arrive_once(
        node_factory: Any, collectors: list[Collector]) -> None:
    require(STORESCU)
    port = free_port()
    node = node_factory(audit={"syslog": f"127.0.0.1:{port}", "transport": "tcp",
                               "interval_s": 0.2}).start()
    result = storescu(node, *ct_files()[:3])
    assert result.returncode == 0, result.stderr
    assert wait_for(lambda: node.query(
        "SELECT COUNT(*) FROM audit WHERE action='association released'") == [(1,)], 30)
    assert node.query("SELECT COUNT(*) FROM audit WHERE forwarded=1") == [(0,)]
    collector = Collector("tcp", port)  # the collector comes back
    collectors.append(collector)
    assert wait_for(lambda: node.query("SELECT COUNT(*) FROM audit WHERE forwarded != 1")
                    == [(0,)], 60), node.log()[-2000:]
    assert wait_for(lambda: len(collector.events("110104")) == 1, 10), collector.raw
    assert len(collector.events("110100", "110120")) == 1
    assert len(collector.raw) == len(set(collector.raw))
