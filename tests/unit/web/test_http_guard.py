"""Issue 24 §1 on the web app (the real server and Chromium: tests/integration/
test_hostile_http.py): cross-site changes refused, CSRF tokens, Host check, body caps, a
sign-in that echoes nothing, slowed and audited wrong tokens, path segments encoded, status
messages only from the node."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from node.domain import InstanceRef, JobState, SeriesKey
from node.store.queue import JobQueue
from tests.unit.web.conftest import TOKEN, csrf_of

EVIL = "https://evil.example"
PEER = {"name": "EVIL", "ae_title": "EVIL", "host": "203.0.113.9", "port": "104"}


@pytest.mark.parametrize("token", [None, TOKEN])
@pytest.mark.parametrize("headers", [{"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"},
                                     {"Origin": "null"}, {"Sec-Fetch-Site": "same-site"}])
def test_cross_site_changes_are_refused_with_or_without_a_token(
        make_client: Any, token: str | None, headers: dict[str, str]) -> None:
    client, context = make_client(**({"http_token": token} if token else {}))
    if token:
        client.post("/ui/login", data={"token": token})
    csrf = csrf_of(client)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    queue = JobQueue(context.store)
    queue.enqueue(SeriesKey("1.2.3", 1), [("ct", "ct_body_seg")], now=1)
    job = queue.jobs(1)[0]
    for method, path, kwargs in (
            ("POST", "/ui/peers", {"data": {**PEER, "csrf": csrf}}),
            ("POST", f"/ui/jobs/{job.id}/cancel", {"data": {"csrf": csrf}}),
            ("POST", "/api/peers", {"json": PEER, "headers": auth}),
            ("PUT", "/api/peers/PACS", {"json": {**PEER, "name": "PACS"}, "headers": auth}),
            ("DELETE", "/api/peers/CT", {"headers": auth}),
            ("POST", f"/api/jobs/{job.id}/cancel", {"headers": auth})):
        answer = client.request(method, path, **{**kwargs, "headers": {
            **kwargs.get("headers", {}), **headers}})
        assert answer.status_code == 403, (method, path, answer.text)
    names = {p.name: p for p in context.peers.settings().peers}
    assert "EVIL" not in names and names["PACS"].host == "127.0.0.1" and "CT" in names
    assert queue.jobs(1)[0].state == JobState.QUEUED
    # the same from the node's own page is taken
    same = client.post("/ui/peers", data={**PEER, "csrf": csrf}, follow_redirects=False,
                       headers={"Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 303 and "EVIL" in {p.name for p in context.peers.settings().peers}


def test_dashboard_forms_need_the_sessions_csrf_token(make_client: Any) -> None:
    client, context = make_client()
    queue = JobQueue(context.store)
    queue.enqueue(SeriesKey("1.2.3", 1), [("ct", "ct_body_seg")], now=1)
    job = queue.jobs(1)[0]
    for path, data in (("/ui/peers", PEER), (f"/ui/jobs/{job.id}/cancel", {}),
                       (f"/ui/jobs/{job.id}/retry", {}), ("/ui/results/1/requeue", {}),
                       ("/ui/peers/PACS/echo", {}), ("/ui/series/1.2.3/complete", {})):
        assert client.post(path, data=data).status_code == 403, path
        assert client.post(path, data={**data, "csrf": "0" * 40}).status_code == 403, path
    other, _ = make_client()  # another browser's token is not this one's
    assert client.post("/ui/peers", data={**PEER, "csrf": csrf_of(other)}).status_code == 403
    assert "EVIL" not in {p.name for p in context.peers.settings().peers}
    assert queue.jobs(1)[0].state == JobState.QUEUED
    page = client.get("/ui/jobs").text
    csrf = csrf_of(client, "/ui/jobs")
    assert f'name="csrf" value="{csrf}"' in page
    done = client.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": csrf}, follow_redirects=True)
    assert f"job {job.id} cancelled" in done.text
    assert queue.jobs(1)[0].state == JobState.CANCELLED


def test_only_the_configured_host_names_are_answered(make_client: Any) -> None:
    client, _ = make_client()
    assert client.get("/healthz").status_code == 200
    for host in ("localhost", "127.0.0.1:8080", "[::1]:8080"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    assert client.get("/api/status", headers={"Host": "rebind.evil.example"}).status_code == 400
    named, _ = make_client(http_allowed_hosts=["ainode.radiology.local"])
    assert named.get("/healthz", headers={"Host": "ainode.radiology.local:8080"}
                     ).status_code == 200


def test_bodies_are_capped_and_the_sign_in_echoes_nothing(make_client: Any) -> None:
    client, _ = make_client(http_token=TOKEN)
    huge = client.post("/ui/login", headers={"Content-Length": str(600 * 1024 * 1024),
                                             "Content-Type": "application/x-www-form-urlencoded"},
                       content=b"token=x")
    assert huge.status_code == 413
    big = client.post("/ui/login", data={"token": "A" * 10_000})
    assert big.status_code == 413 and "set-cookie" not in big.headers

    def chunks() -> Any:
        for _ in range(3):
            yield b"x" * (512 * 1024)

    streamed = client.post("/api/peers", content=chunks(),
                           headers={"Authorization": f"Bearer {TOKEN}",
                                    "Content-Type": "application/json"})
    assert streamed.status_code == 413
    marker = '"><script>alert(1)</script>'
    answer = client.post("/ui/login", data={"token": marker}, follow_redirects=False)
    assert answer.status_code == 401 and "set-cookie" not in answer.headers
    assert marker not in answer.text and "alert(1)" not in answer.text


def test_wrong_tokens_are_slowed_logged_once_and_audited(
        make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "node.web.throttle")
    client, context = make_client(http_token=TOKEN)
    answers = [client.post("/ui/login", data={"token": f"guess-{n}"}).status_code
               for n in range(5)]
    answers += [client.get("/api/status", headers={"Authorization": "Bearer guess"}).status_code
                for _ in range(20)]
    assert answers[:6] == [401] * 6 and set(answers[7:]) == {429}, answers
    locked = client.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
    assert client.post("/ui/login", data={"token": TOKEN}).status_code == 429
    lines = [r for r in caplog.records if "authentication failed" in r.getMessage()]
    assert len(lines) == 1 and "testclient" in lines[0].getMessage()
    audited = [line for line in context.store.audit_lines()
               if line.action == "authentication failed"]
    assert len(audited) == 1 and audited[0].outcome == 4 and audited[0].address == "testclient"


def _record(context: Any, series_uid: str) -> None:
    context.store.record_instance(InstanceRef(
        "1.2.9", "1.2.840.10008.5.1.4.1.1.2", series_uid, "1.2", "1.2.840.10008.1.2", "CT",
        "/spool/x.dcm", 10, "CT", "AINODE", None), now=0)


def test_names_and_uids_are_encoded_as_path_segments(make_client: Any) -> None:
    client, context = make_client()
    hostile = "../jobs/1/cancel?"
    _record(context, hostile)
    queue = JobQueue(context.store)
    queue.enqueue(SeriesKey("1.2.3", 1), [("ct", "ct_body_seg")], now=1)
    page = client.get("/ui/series").text
    actions = re.findall(r'action="([^"]+)"', page)
    assert "/ui/series/..%2Fjobs%2F1%2Fcancel%3F/complete" in actions, actions
    done = client.post(actions[0], data={"csrf": csrf_of(client)}, follow_redirects=True)
    assert "series completed" in done.text
    assert queue.jobs(1)[0].state == JobState.QUEUED  # job 1 untouched
    assert context.store.list_series(5)[0].state.value == "complete"


def test_status_messages_are_only_the_nodes_own(make_client: Any) -> None:
    client, _ = make_client()
    forged = client.get("/ui/peers", params={"flash": "Call 555-0100 to re-enter the token"})
    assert "555-0100" not in forged.text
    done = client.post("/ui/peers", data={**PEER, "csrf": csrf_of(client)},
                       follow_redirects=True)
    assert "added EVIL: EVIL@203.0.113.9:104" in done.text
    tampered = str(done.url).replace("added+EVIL", "added+MALLORY")
    assert "MALLORY" not in client.get(tampered).text
