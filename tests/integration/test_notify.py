"""Notifications from a real ``ainode serve`` to local receivers: a webhook (HMAC checked),
a FHIR endpoint (the Bundle validated with fhir.resources) and an MLLP listener that first
answers AE (retried) and then AA. The urgent film is announced on every channel; the routine
one only where every result is asked for."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from fhir.resources.R4B.bundle import Bundle

from tests.support.environment import ROOT, STORESCU, require, wait_for
from tests.support.node import NodeProcess, storescu
from tests.support.radiographs import radiograph

pytestmark = pytest.mark.integration
SECRET = "webhook-secret"


class _Http(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


class _Mllp(socketserver.BaseRequestHandler):
    messages: list[str]
    answers: list[str]  # ACK codes to give, in order; AA after them

    def handle(self) -> None:
        data = b""
        while b"\x1c\x0d" not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
        text = data.strip(b"\x0b\x1c\x0d").decode()
        self.messages.append(text)
        control = hl7.parse(text).segment("MSH")[10]
        code = self.answers.pop(0) if self.answers else "AA"
        ack = f"MSH|^~\\&|RIS||AINODE||20261129||ACK|A{control}|P|2.5\rMSA|{code}|{control}\r"
        self.request.sendall(b"\x0b" + ack.encode() + b"\x1c\x0d")


@pytest.fixture
def receivers() -> Iterator[dict[str, Any]]:
    handler = type("Http", (_Http,), {"received": []})
    mllp = type("Mllp", (_Mllp,), {"messages": [], "answers": ["AE"]})
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ris = socketserver.ThreadingTCPServer(("127.0.0.1", 0), mllp)
    for server in (web, ris):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield {"http": web.server_address[1], "hl7": ris.server_address[1],
               "received": handler.received, "messages": mllp.messages}
    finally:
        for server in (web, ris):
            server.shutdown()
            server.server_close()


def test_urgent_results_reach_webhook_fhir_and_ris_durably(
        node_factory: Any, tmp_path: Path, receivers: dict[str, Any]) -> None:
    require(STORESCU)
    http_port = receivers["http"]
    node: NodeProcess = node_factory(
        series={"quiet_seconds": 1, "sweep_interval_s": 0.2},
        inference={"model_repository": str(ROOT / "model_repository")},
        egress={"retry_s": 0.5, "max_retry_s": 1, "interval_s": 0.3},
        pipelines=[{"name": "cxr-mass", "match": {"modality": "CR"}, "model": "cxr_mass_cls",
                    "outputs": ["sr"],
                    "urgent_if": [{"finding": "mass", "min_probability": 0.8}]}],
        notify=[{"name": "alerts", "webhook": f"http://127.0.0.1:{http_port}/hook",
                 "secret": SECRET, "every_result": True},
                {"name": "fhir", "fhir": f"http://127.0.0.1:{http_port}/fhir"},
                {"name": "ris", "hl7": f"127.0.0.1:{receivers['hl7']}"}])
    node.start()
    films = {kind: radiograph(tmp_path, kind, f"NOTIFY-{kind}") for kind in ("mass", "plain")}
    assert storescu(node, *films.values()).returncode == 0
    settled = ("SELECT COUNT(*) FROM outbox WHERE kind='notify' AND state='sent'")
    assert wait_for(lambda: node.query(settled) == [(4,)], 240, 0.3), (
        node.query("SELECT destination, state, error FROM outbox"), node.log()[-3000:])
    assert node.query("SELECT destination, attempts FROM outbox WHERE destination='notify:ris'"
                      ) == [("notify:ris", 2)]  # answered AE, sent again, accepted (AA)

    hooks = [(headers, body) for path, headers, body in receivers["received"]
             if path == "/hook"]
    assert len(hooks) == 2  # every result
    for headers, body in hooks:
        expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Ainode-Signature"] == f"sha256={expected}"
    urgency = sorted(json.loads(body)["urgent"] for _, body in hooks)
    assert urgency == [False, True]

    bundles = [body for path, _, body in receivers["received"] if path == "/fhir"]
    assert len(bundles) == 1  # urgent only
    bundle = Bundle.model_validate(json.loads(bundles[0]))
    (report,) = [e.resource for e in bundle.entry
                 if e.resource.get_resource_type() == "DiagnosticReport"]
    assert report.conclusion.startswith("URGENT: cxr_mass_cls")
    assert report.imagingStudy[0].identifier.value.startswith("urn:oid:")

    messages = receivers["messages"]
    assert len(messages) == 2  # the one answered AE, sent again with its control ID
    first, again = (hl7.parse(m) for m in messages)
    assert str(first.segment("MSH")[10]) == str(again.segment("MSH")[10])
    assert str(first.segment("PID")) == str(again.segment("PID"))
    oru = first
    assert str(oru.segment("PID")[3]) == "NOTIFY-mass" and str(oru.segment("OBR")[5]) == "S"
    assert "NOTIFY" not in node.log()  # the patient ID went to the RIS, not to the log
