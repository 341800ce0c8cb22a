"""The web role's routes on a real job store and spool: authentication, health, metrics,
the admin API, peers managed live, STOW-RS in."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.domain import SeriesKey
from node.settings import ConfigError, load_settings
from node.store.queue import JobQueue
from tests.support.dicomweb import multipart
from tests.support.environment import ct_files
from tests.unit.web.conftest import TOKEN

BEARER = {"Authorization": f"Bearer {TOKEN}"}




def test_with_a_token_everything_but_the_probes_needs_it(make_client: Any) -> None:
    client, _ = make_client(http_token=TOKEN)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    paths = ("/api/status", "/metrics", "/api/peers", "/api/jobs", "/openapi.json", "/docs")
    for index, path in enumerate(paths):
        missing = client.get(path)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        if index < 5:  # the sixth wrong token from one address is slowed (test_http_guard)
            assert client.get(path, headers={"Authorization": "Bearer wrong"}
                              ).status_code == 401
        assert client.get(path, headers=BEARER).status_code == 200, path
    body, content_type = multipart(ct_files()[0].read_bytes())
    assert client.post("/dicomweb/studies", content=body,
                       headers={"Content-Type": content_type}).status_code == 401


def test_without_a_token_the_server_stays_on_loopback(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("node:\n  http_bind: 0.0.0.0\n")
    with pytest.raises(ConfigError, match=r"node: .*http_bind 0.0.0.0 .*node.http_token"):
        load_settings(config, environ={})
    settings = load_settings(config, environ={"AINODE__NODE__HTTP_TOKEN": TOKEN})
    assert settings.node.http_token is not None
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_settings(config, environ={"AINODE__NODE__HTTP_TOKEN": "short"})


def test_readiness_names_what_fails(make_client: Any) -> None:
    client, context = make_client(min_free_disk_mb=1_000_000_000)  # a floor no disk reaches
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert set(answer.json()["failed"]) == {"disk"}
    assert "below node.min_free_disk_mb" in answer.json()["failed"]["disk"]
    body, content_type = multipart(ct_files()[0].read_bytes())
    refused = client.post("/dicomweb/studies", content=body,
                          headers={"Content-Type": content_type})
    assert refused.status_code == 507 and "disk space below" in refused.json()["error"]
    assert not list((context.settings.node.data_dir / "spool" / ".tmp").iterdir())


def test_stow_rs_stores_indexes_and_reports_each_instance(make_client: Any) -> None:
    client, context = make_client()
    files = ct_files()[:3]
    body, content_type = multipart(*(f.read_bytes() for f in files), b"not DICOM at all")
    answer = client.post("/dicomweb/studies", content=body,
                         headers={"Content-Type": content_type})
    assert answer.status_code == 202  # some stored, one failed
    assert answer.headers["content-type"] == "application/dicom+json"
    response = answer.json()
    stored = [item["00081155"]["Value"][0] for item in response["00081199"]["Value"]]
    expected = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    assert stored == expected
    (failure,) = response["00081198"]["Value"]
    assert failure["00081197"]["Value"] == [0xC210]
    rows = context.store.query("SELECT sop_uid, path, calling_ae FROM instances"
                               " JOIN series USING (series_uid, revision) ORDER BY sop_uid")
    assert sorted(r[0] for r in rows) == sorted(expected)
    assert {r[2] for r in rows} == {"DICOMWEB"}
    for uid, path, _ in rows:  # kept as sent, byte for byte
        source = files[expected.index(str(uid))]
        assert Path(str(path)).read_bytes() == source.read_bytes()
    assert not list((context.settings.node.data_dir / "spool" / ".tmp").iterdir())

    metrics = client.get("/metrics").text
    assert 'ainode_instances_received_total{transport="stow"}' in metrics
    assert 'ainode_instances_refused_total{status="0xC210",transport="stow"}' in metrics
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    assert study not in metrics and expected[0] not in metrics  # no UIDs in labels


def test_stow_rs_refusals(make_client: Any) -> None:
    client, _ = make_client()
    body, content_type = multipart(ct_files()[0].read_bytes())
    other_study = client.post("/dicomweb/studies/1.2.3.4", content=body,
                              headers={"Content-Type": content_type})
    assert other_study.status_code == 409  # none stored
    (failure,) = other_study.json()["00081198"]["Value"]
    assert failure["00081197"]["Value"] == [0xA900]
    not_multipart = client.post("/dicomweb/studies", content=ct_files()[0].read_bytes(),
                                headers={"Content-Type": "application/dicom"})
    assert not_multipart.status_code == 415
    assert "multipart/related" in not_multipart.json()["error"]
    unterminated = body.rsplit(b"--", 2)[0]
    cut = client.post("/dicomweb/studies", content=unterminated,
                      headers={"Content-Type": content_type})
    assert cut.status_code == 400 and "closing boundary" in cut.json()["error"]


def test_complete_now_cancel_and_retry(make_client: Any) -> None:
    client, context = make_client()
    body, content_type = multipart(ct_files()[0].read_bytes())
    assert client.post("/dicomweb/studies", content=body,
                       headers={"Content-Type": content_type}).status_code == 200
    (series,) = client.get("/api/series").json()
    assert series["state"] == "receiving" and series["calling_ae"] == "DICOMWEB"
    uid = series["series_instance_uid"]
    assert client.post(f"/api/series/{uid}/complete").json()["state"] == "complete"
    assert client.post(f"/api/series/{uid}/complete").status_code == 404  # none receiving
    (series,) = client.get("/api/series").json()
    assert (series["state"], series["completion_reason"]) == ("complete", "operator")

    queue = JobQueue(context.store)
    queue.enqueue(SeriesKey(uid, 1), [("ct", "ct_body_seg")], now=1)
    (job,) = client.get("/api/jobs", params={"state": "queued"}).json()
    assert client.post(f"/api/jobs/{job['id']}/cancel").json()["state"] == "cancelled"
    assert client.get("/api/jobs", params={"state": "queued"}).json() == []
    assert client.post(f"/api/jobs/{job['id']}/cancel").status_code == 409
    assert client.post(f"/api/jobs/{job['id']}/retry").json()["state"] == "queued"
    assert client.post(f"/api/jobs/{job['id']}/retry").status_code == 409
    assert client.get("/api/results").json() == []
    assert client.post("/api/results/99/requeue").status_code == 409
    actions = [line["action"] for line in client.get("/api/audit").json()]
    assert {"series completed", "job cancelled", "requeue jobs"} <= set(actions)
    metrics = client.get("/metrics").text
    assert 'ainode_jobs{state="queued"} 1.0' in metrics
    assert 'ainode_queue_depth{queue="jobs"} 1.0' in metrics
    assert "ainode_build_info{" in metrics and "ainode_disk_free_bytes " in metrics


def test_peers_are_managed_live_validated_and_audited(make_client: Any) -> None:
    client, context = make_client()
    names = [p["name"] for p in client.get("/api/peers").json()]
    assert names == ["PACS", "CT"]
    new = {"name": "MR2", "ae_title": "MR2", "host": "10.0.0.7", "port": 104}
    added = client.post("/api/peers", json=new)
    assert added.status_code == 201 and added.json()["source"] == "live"
    assert client.post("/api/peers", json=new).status_code == 409
    assert context.peers.settings().peer("MR2").ae_title == "MR2"

    bad_port = client.put("/api/peers/MR2", json={**new, "port": 70000})
    assert bad_port.status_code == 422 and "peers.MR2.port" in bad_port.json()["detail"]
    bad_ae = client.put("/api/peers/MR2", json={**new, "ae_title": "A" * 17})
    assert bad_ae.status_code == 422 and "peers.MR2.ae_title" in bad_ae.json()["detail"]
    secret = client.put("/api/peers/MR2", json={**new, "password": "pw", "username": "u"})
    assert secret.status_code == 422 and "password_env" in secret.json()["detail"]
    for unsafe in ({"password_file": "/etc/shadow"}, {"tls_ca": "/etc/ssl/private/key.pem"},
                   {"token_env": "AINODE__STORE__URL"}):
        refused = client.put("/api/peers/MR2", json={**new, "dicomweb_url": "http://x/",
                                                     **unsafe})
        assert refused.status_code == 422, unsafe
        assert f"peers.MR2.{next(iter(unsafe))}" in refused.json()["detail"]
    changed = client.put("/api/peers/MR2", json={**new, "port": 11112})
    assert changed.status_code == 200 and changed.json()["port"] == 11112

    in_use = client.delete("/api/peers/PACS")
    assert in_use.status_code == 409 and "pipelines ct" in in_use.json()["detail"]
    assert client.delete("/api/peers/CT").json() == {"name": "CT", "removed": True}
    assert [p["name"] for p in client.get("/api/peers").json()] == ["PACS", "MR2"]
    assert context.peers.settings().peer_by_ae("CTSCAN") is None
    assert client.post("/api/peers/CT/reset").json()["reset"] is True
    assert context.peers.settings().peer_by_ae("CTSCAN") is not None  # the file's again
    assert client.get("/api/peers/CT").json()["source"] == "file"
    assert client.get("/api/peers/NOPE").status_code == 404

    actions = [(line["action"], line["address"]) for line in client.get("/api/audit").json()]
    assert ("peer added", "testclient") in actions and ("peer removed", "testclient") in actions
    assert ("peer changed", "testclient") in actions and ("peer reset", "testclient") in actions
    stored = json.dumps(context.store.query("SELECT * FROM peer_changes"))
    assert "pw" not in stored


# pynetdicom leaves the refused socket to the garbage collector (closed there, not leaked)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_echo_of_a_peer_that_is_down_says_so(make_client: Any) -> None:
    client, _ = make_client()
    client.post("/api/peers", json={"name": "DOWN", "ae_title": "DOWN", "host": "127.0.0.1",
                                    "port": 9})
    answer = client.post("/api/peers/DOWN/echo").json()
    assert answer["ok"] is False and "DOWN" in answer["error"]
    assert client.post("/api/peers/NOPE/echo").status_code == 404


def test_openapi_lists_the_admin_api(make_client: Any) -> None:
    client, _ = make_client()
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/series", "/api/jobs/{job_id}/retry", "/api/jobs/{job_id}/cancel",
                 "/api/results/{item_id}/requeue", "/api/peers", "/api/peers/{name}/echo",
                 "/api/models", "/api/pipelines", "/api/audit", "/dicomweb/studies",
                 "/healthz", "/readyz", "/metrics", "/api/studies/{study_uid}/export"):
        assert path in paths, path
    page = client.get("/docs")
    assert page.status_code == 200
    # Swagger UI from the node itself, not a CDN: every script and style it names is served
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page.text)
    assert len(assets) == 2 and all(a.startswith("/docs-static/") for a in assets), assets
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200 and len(served.content) > 100_000, asset


def _readme_section(title: str) -> str:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    return readme.split(title, 1)[1].split("\n## ", 1)[0]


def test_the_readme_http_snippet_needs_the_token_it_names(tmp_path: Path) -> None:
    section = _readme_section("## Operating the node over HTTP")
    snippet = section.split("```yaml", 1)[1].split("```", 1)[0]
    config = tmp_path / "node.yaml"
    config.write_text(snippet)
    with pytest.raises(ConfigError, match=r"node\.http_token"):
        load_settings(config, environ={})
    settings = load_settings(config, environ={"AINODE__NODE__HTTP_TOKEN": TOKEN})
    assert (settings.node.http_bind, settings.node.http_port) == ("0.0.0.0", 8080)


def test_the_readme_peer_example_is_accepted_as_written(make_client: Any) -> None:
    """The curl body of the README's live-peer example, posted as written, adds the peer;
    the validation message the README quotes is the one a bad port gets."""
    section = _readme_section("### AE titles managed live")
    body = json.loads(section.split("-d '", 1)[1].split("'", 1)[0])
    client, context = make_client()
    answer = client.post("/api/peers", json=body)
    assert answer.status_code == 201, answer.text
    assert context.peers.settings().peer("CT2").hosts == ["10.1.2.0/24"]
    quoted = section.split("(422 naming the key, e.g.", 1)[1].split("`", 2)[1]
    bad = client.put("/api/peers/CT2", json={**body, "port": 70000})
    assert bad.json()["detail"] == quoted


def test_a_request_of_thousands_of_refused_parts_is_one_log_line(
        make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 24 §5: every part answered in the Failed SOP Sequence, one summary line."""
    caplog.set_level(logging.INFO)
    client, _ = make_client()
    boundary = "many-parts"
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + b"not dicom %d" % n + b"\r\n" for n in range(5000))
    body += f"--{boundary}--\r\n".encode()
    answer = client.post("/dicomweb/studies", content=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert answer.status_code == 409
    assert len(answer.json()["00081198"]["Value"]) == 5000
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "0 stored, 5000 refused (0xC210: 5000" in lines[0], lines[:3]
