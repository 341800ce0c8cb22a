"""The web role of a real ``ainode serve``: health, metrics across role processes, peers
managed live (a new AE title is accepted at its next association, no restart), C-ECHO from
the API, and STOW-RS in from dicomweb-client and from Orthanc's own DICOMweb client."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from tests.support.environment import (
    DCMTK_ENV,
    ECHOSCU,
    ct_files,
    free_port,
    require,
    wait_for,
    wait_port,
)
from tests.support.node import NodeProcess, http_call, storescu
from tests.support.orthanc import start_orthanc

pytestmark = pytest.mark.integration
TOKEN = "integration-test-token-0123"
STORESCP = "/usr/bin/storescp"


def http(node: NodeProcess, path: str, body: Any = None, method: str | None = None,
         token: str | None = TOKEN) -> tuple[int, Any]:
    return http_call(node.overrides["http_port"], path, body, method, token, timeout=60)


def echo(node: NodeProcess, calling: str) -> int:
    return subprocess.run([ECHOSCU, "-aet", calling, "-aec", node.ae_title, "127.0.0.1",
                           str(node.port)], env=DCMTK_ENV, capture_output=True,
                          timeout=30).returncode


def metric(text: str, line_start: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(line_start)]
    return sum(values)


@pytest.fixture
def web_node(node_factory: Any) -> NodeProcess:
    require(ECHOSCU)
    http_port = free_port()
    node: NodeProcess = node_factory(node={"http_port": http_port})
    node.overrides["http_port"] = http_port
    node.env["AINODE__NODE__HTTP_TOKEN"] = TOKEN
    node.start()
    wait_port(http_port, timeout=60, proc=node.proc)
    return node


def test_health_metrics_and_a_peer_added_live(web_node: NodeProcess, tmp_path: Any) -> None:
    node = web_node
    assert http(node, "/healthz", token=None) == (200, {"status": "ok"})
    status, ready = http(node, "/readyz", token=None)
    assert status == 200 and ready["ready"] is True, ready
    assert http(node, "/api/status", token=None)[0] == 401
    assert http(node, "/api/status", token="wrong")[0] == 401

    assert storescu(node, *ct_files()[:3]).returncode == 0
    assert echo(node, "NEWCT") != 0  # not a peer yet: rejected
    text = ""

    def counted() -> bool:
        nonlocal text
        text = http(node, "/metrics")[1]
        return (metric(text, 'ainode_instances_received_total{transport="dimse"}') == 3
                and metric(text, 'ainode_associations_total{outcome="rejected",'
                                 'reason="unknown_caller"}') == 1)
    assert wait_for(counted, 30, 0.2), text  # counted in the receiver, shown by the web role
    assert metric(text, 'ainode_received_bytes_total{transport="dimse"}') > 3 * 500_000
    assert 'ainode_jobs{state="queued"}' in text and "ainode_build_info" in text

    status, added = http(node, "/api/peers", {"name": "NEWCT", "ae_title": "NEWCT",
                                               "host": "127.0.0.1", "port": 104})
    assert status == 201, added
    assert echo(node, "NEWCT") == 0  # the very next association, no restart
    status, _ = http(node, "/api/peers/NEWCT", method="DELETE")
    assert status == 200
    assert echo(node, "NEWCT") != 0
    actions = [line["action"] for line in http(node, "/api/audit")[1]]
    assert "peer added" in actions and "peer removed" in actions

    # C-ECHO from the API to a real peer (dcmtk storescp), and to one that is down
    require(STORESCP)
    scp_port = free_port()
    with subprocess.Popen([STORESCP, "-aet", "ARCHIVE", str(scp_port)], env=DCMTK_ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as scp:
        try:
            wait_port(scp_port, proc=scp)  # type: ignore[arg-type]
            http(node, "/api/peers", {"name": "ARCHIVE", "ae_title": "ARCHIVE",
                                      "host": "127.0.0.1", "port": scp_port})
            status, answer = http(node, "/api/peers/ARCHIVE/echo", {})
            assert status == 200 and answer["ok"] is True and answer["status"] == "0x0000"
            assert answer["round_trip_ms"] > 0
        finally:
            scp.terminate()
    status, answer = http(node, "/api/peers/ARCHIVE/echo", {})
    assert answer["ok"] is False and "ARCHIVE" in answer["error"]


def test_stow_rs_from_dicomweb_client_and_from_orthanc(web_node: NodeProcess,
                                                       tmp_path: Any) -> None:
    node = web_node
    port = node.overrides["http_port"]
    client = DICOMwebClient(f"http://127.0.0.1:{port}/dicomweb",
                            headers={"Authorization": f"Bearer {TOKEN}"})
    files = ct_files()[:4]
    answer = client.store_instances([pydicom.dcmread(f) for f in files[:2]])
    assert len(answer.ReferencedSOPSequence) == 2 and "FailedSOPSequence" not in answer
    assert node.query("SELECT COUNT(*), MIN(calling_ae) FROM instances JOIN series"
                      " USING (series_uid, revision)") == [(2, "DICOMWEB")]

    # Orthanc's DICOMweb client pushes a study to the node (STOW-RS with the bearer token)
    servers = {"ainode": {"Url": f"http://127.0.0.1:{port}/dicomweb/",
                          "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"}}}
    with start_orthanc(tmp_path, free_port(), free_port(), node.port,
                       dicomweb_servers=servers) as orthanc:
        study = orthanc.upload(files[2:])
        orthanc.api("/dicom-web/servers/ainode/stow", json.dumps({"Resources": [study]}))
    assert wait_for(lambda: node.query("SELECT COUNT(*) FROM instances") == [(4,)], 30)
    # the series completes (quiet period) and is routed from the store like a C-STORE one
    assert wait_for(lambda: node.query("SELECT state, route_state FROM series")
                    == [("complete", "skipped")], 60, 0.2), node.query("SELECT * FROM series")
    text = http(node, "/metrics")[1]
    assert metric(text, 'ainode_instances_received_total{transport="stow"}') == 4
    kept = sorted(node.stored_files())
    assert len(kept) == 4
