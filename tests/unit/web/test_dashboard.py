"""The dashboard's pages and forms on a real job store (the browser test is in
tests/integration/test_dashboard.py)."""

from __future__ import annotations

from typing import Any

from node.domain import SeriesKey
from node.store.queue import JobQueue
from tests.unit.web.conftest import TOKEN, csrf_of


def test_pages_render_and_forms_change_state_with_audit(make_client: Any) -> None:
    client, context = make_client()
    for path, heading in (("/ui", "Overview"), ("/ui/series", "Series"), ("/ui/jobs", "Jobs"),
                          ("/ui/failures", "Failures"), ("/ui/studies", "Studies"),
                          ("/ui/peers", "Peers")):
        page = client.get(path)
        assert page.status_code == 200 and f"<h1>{heading}</h1>" in page.text, path
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui"
    csrf = csrf_of(client)

    saved = client.post("/ui/peers", data={"name": "MR3", "ae_title": "MR3", "host": "10.0.0.9",
                                           "port": "104", "hosts": "10.0.0.0/24, 10.1.0.5",
                                           "results": "seg", "tls": "on", "csrf": csrf},
                        follow_redirects=True)
    assert "added MR3: MR3@10.0.0.9:104" in saved.text
    peer = context.peers.settings().peer("MR3")
    assert peer.hosts == ["10.0.0.0/24", "10.1.0.5"] and peer.results == ["seg"] and peer.tls
    refused = client.post("/ui/peers", data={"name": "X", "ae_title": "X", "host": "h",
                                             "port": "99999", "csrf": csrf}, follow_redirects=True)
    assert 'class="flash error"' in refused.text and "peers.X.port" in refused.text
    edit = client.get("/ui/peers", params={"edit": "MR3"}).text
    assert 'value="10.0.0.9"' in edit and "Edit MR3" in edit

    queue = JobQueue(context.store)
    queue.enqueue(SeriesKey("1.2.3", 1), [("ct", "ct_body_seg")], now=1)
    job = queue.claim(now=2, lease_s=60)
    assert job is not None
    queue.fail(job, "model 'ct_body_seg' is not in the repository", now=3)
    failures = client.get("/ui/failures").text
    assert "model &#39;ct_body_seg&#39; is not in the repository" in failures  # escaped
    retried = client.post(f"/ui/jobs/{job.id}/retry", data={"csrf": csrf},
                          follow_redirects=True)
    assert f"job {job.id} queued again" in retried.text
    assert queue.counts()["queued"] == 1
    again = client.post(f"/ui/jobs/{job.id}/retry", data={"csrf": csrf},
                        follow_redirects=True)
    assert 'class="flash error"' in again.text
    actors = {line.actor for line in context.store.audit_lines()}
    assert "admin-api (dashboard)" in actors


def test_with_a_token_the_dashboard_asks_to_sign_in(make_client: Any) -> None:
    client, _ = make_client(http_token=TOKEN)
    answer = client.get("/ui/jobs", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
    assert client.post("/ui/peers", data={"name": "Z"}, follow_redirects=False
                       ).status_code == 303  # no change without the token
    wrong = client.post("/ui/login", data={"token": "wrong"})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    assert client.get("/ui/jobs", follow_redirects=False).status_code == 303
    signed = client.post("/ui/login", data={"token": TOKEN}, follow_redirects=False)
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    assert client.get("/ui/jobs").status_code == 200


def test_the_jobs_page_shows_each_stage_under_its_own_heading(make_client: Any) -> None:
    import re

    from node.runtime.metrics import JOB_STAGES

    client, context = make_client()
    queue = JobQueue(context.store)
    queue.enqueue(SeriesKey("1.2.3", 1), [("ct", "ct_body_seg")], now=1)
    job = queue.claim(now=2, lease_s=60)
    assert job is not None
    seconds = {stage: index + 0.25 for index, stage in enumerate(JOB_STAGES)}
    queue.complete(job, {"seconds": seconds}, now=3)
    page = client.get("/ui/jobs").text
    headings = re.findall(r"<th>([^<]*)</th>", page)
    (row,) = re.findall(rf'<tr data-job="{job.id}"[^>]*>(.*?)</tr>', page, re.S)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    assert "write" in JOB_STAGES
    for stage, value in seconds.items():
        assert cells[headings.index(stage)] == f"{value:.2f} s", stage
