"""Issue 25: an operator action means the same from the CLI, the admin API and the dashboard
(one module, node.operations.actions, behind all three). Each test drives one action through
the three entry points on one real job store and compares what changed, what was refused
and what was audited."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from node.cli import app
from node.domain import AuditEvent, JobState, SeriesKey
from node.store.queue import JobQueue
from node.store.rejections import Rejections
from node.store.verdicts import Verdicts
from node.web.context import WebContext
from tests.support.dicomweb import multipart
from tests.support.environment import ct_files, free_port
from tests.unit.web.conftest import config_for, csrf_of


@dataclass
class Node:
    client: TestClient
    context: WebContext
    config: Path

    def cli(self, *arguments: str) -> tuple[bool, str]:
        result: Any = CliRunner().invoke(app, [*arguments, "--config", str(self.config)])
        return result.exit_code == 0, result.output

    def api(self, path: str, json: dict[str, Any] | None = None) -> tuple[bool, str]:
        answer = self.client.post(f"/api{path}", json=json)
        return answer.status_code < 300, answer.text

    def dashboard(self, path: str, data: dict[str, str] | None = None) -> tuple[bool, str]:
        page = self.client.post(f"/ui{path}", data={"csrf": csrf_of(self.client), **(data or {})},
                                follow_redirects=True)
        assert page.status_code == 200, page.text
        return 'class="flash error"' not in page.text, page.text

    def audited(self, event: AuditEvent) -> list[str]:
        """The actors of ``event``'s lines, oldest first."""
        return [line.actor for line in reversed(self.context.store.audit_lines(1000))
                if line.action == event]

    def stow(self, path: Path) -> str:
        body, content_type = multipart(path.read_bytes())
        assert self.client.post("/dicomweb/studies", content=body,
                                headers={"Content-Type": content_type}).status_code == 200
        return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


ENTRIES = ("cli", "api", "dashboard")
ACTORS = {"api": "admin-api", "dashboard": "admin-api (dashboard)"}


@pytest.fixture
def node(make_client: Any, tmp_path: Path) -> Iterator[Callable[..., Node]]:
    def make(research: list[dict[str, Any]] | None = None) -> Node:
        client, context = make_client(research=research)
        config = tmp_path / "node.yaml"
        config.write_text(yaml.safe_dump(config_for(tmp_path, research)))
        return Node(client, context, config)

    yield make


def _failed_job(node: Node, series: str, state: JobState) -> int:
    queue = JobQueue(node.context.store)
    queue.enqueue(SeriesKey(series, 1), [("ct", "ct_body_seg")], now=1)
    job = queue.claim(now=2, lease_s=60)
    assert job is not None
    if state is JobState.FAILED:
        queue.fail(job, "model missing", now=3)
    else:
        assert queue.cancel(job.id, "by hand", now=3)
    return job.id


def _state(node: Node, job_id: int) -> str:
    (job,) = [j for j in JobQueue(node.context.store).jobs(100) if j.id == job_id]
    return job.state.value


def test_requeue(node: Callable[..., Node]) -> None:
    n = node()
    for index, entry in enumerate(ENTRIES):
        failed = _failed_job(n, f"1.2.826.0.1.{index}.1", JobState.FAILED)
        cancelled = _failed_job(n, f"1.2.826.0.1.{index}.2", JobState.CANCELLED)
        for job_id in (failed, cancelled):  # failed or cancelled: queued again, everywhere
            done, said = {"cli": lambda j: n.cli("requeue", "jobs", str(j)),
                          "api": lambda j: n.api(f"/jobs/{j}/retry"),
                          "dashboard": lambda j: n.dashboard(f"/jobs/{j}/retry")}[entry](job_id)
            assert done, (entry, said)
            assert _state(n, job_id) == "queued", entry
            again, said = {"cli": lambda j: n.cli("requeue", "jobs", str(j)),
                           "api": lambda j: n.api(f"/jobs/{j}/retry"),
                           "dashboard": lambda j: n.dashboard(f"/jobs/{j}/retry")}[entry](job_id)
            assert not again, (entry, "a queued job is not requeued")
    actors = n.audited(AuditEvent.JOBS_REQUEUED)
    assert len(actors) == 6 and actors[2:] == ["admin-api"] * 2 + ["admin-api (dashboard)"] * 2


def test_cancel(node: Callable[..., Node]) -> None:
    n = node()
    queue = JobQueue(n.context.store)
    ways = {"cli": lambda j: n.cli("cancel", str(j)),
            "api": lambda j: n.api(f"/jobs/{j}/cancel"),
            "dashboard": lambda j: n.dashboard(f"/jobs/{j}/cancel")}
    for index, entry in enumerate(ENTRIES):
        queue.enqueue(SeriesKey(f"1.2.826.0.2.{index}", 1), [("ct", "ct_body_seg")], now=1)
        (job,) = queue.jobs(10, JobState.QUEUED)
        done, said = ways[entry](job.id)
        assert done, (entry, said)
        assert _state(n, job.id) == "cancelled"
        assert not ways[entry](job.id)[0], (entry, "an ended job is not cancelled")
    assert n.audited(AuditEvent.JOB_CANCELLED)[1:] == ["admin-api", "admin-api (dashboard)"]


def test_complete_now(node: Callable[..., Node]) -> None:
    n = node()
    ways = {"cli": lambda s: n.cli("complete", s),
            "api": lambda s: n.api(f"/series/{s}/complete"),
            "dashboard": lambda s: n.dashboard(f"/series/{s}/complete")}
    for index, entry in enumerate(ENTRIES):  # each a new revision of the same series
        n.stow(ct_files()[index])
        (series,) = {s.series_instance_uid for s in n.context.store.list_series(10)}
        done, said = ways[entry](series)
        assert done, (entry, said)
        newest = max(n.context.store.list_series(10), key=lambda s: s.revision)
        assert (newest.revision, newest.state.value, newest.completion_reason) == (
            index + 1, "complete", "operator"), entry
        assert not ways[entry](series)[0], (entry, "nothing is receiving")
    assert n.audited(AuditEvent.SERIES_COMPLETED)[1:] == ["admin-api", "admin-api (dashboard)"]


# pynetdicom leaves the socket of a refused connection to the garbage collector
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_retrieve_and_route(node: Callable[..., Node]) -> None:
    n = node()
    n.context.peers.put({"name": "GONE", "ae_title": "GONE", "host": "127.0.0.1",
                         "port": free_port()}, "test")
    study = "1.2.826.0.1.3680043.2.1125.7"
    ways = {"cli": lambda s, p: n.cli("run", s, "--from", p),
            "api": lambda s, p: n.api(f"/studies/{s}/run", {"from": p}),
            "dashboard": lambda s, p: n.dashboard("/studies/run", {"study_uid": s, "from": p})}
    for entry in ENTRIES:
        done, said = ways[entry](study, "GONE")  # a PACS that is down: refused, audited
        assert not done and "GONE" in said, (entry, said)
        done, said = ways[entry]("1.2.3/../x", "GONE")  # not a UID: refused before any URL
        assert not done and "not a Study Instance UID" in said, (entry, said)
        done, said = ways[entry](study, "NOBODY")
        assert not done and "no peer named" in said, (entry, said)
    actors = n.audited(AuditEvent.STUDY_RETRIEVE_FAILED)
    assert len(actors) == 3 and actors[1:] == ["admin-api", "admin-api (dashboard)"]
    assert n.context.store.list_series(10) == []


def test_export(node: Callable[..., Node], tmp_path: Path) -> None:
    key = tmp_path / "project.key"
    key.write_text("a key of more than sixteen bytes")
    n = node(research=[{"name": "cohort", "path": str(tmp_path / "cohort"),
                        "key_file": str(key)}])
    study = n.stow(ct_files()[0])
    ways = {"cli": lambda s, to: n.cli("export", s, "--to", to),
            "api": lambda s, to: n.api(f"/studies/{s}/export", {"to": to}),
            "dashboard": lambda s, to: n.dashboard("/studies/export",
                                                  {"study_uid": s, "to": to})}
    for entry in ENTRIES:
        done, said = ways[entry](study, "cohort")
        assert done, (entry, said)
        done, said = ways[entry](study, "elsewhere")
        assert not done and "no research entry" in said, (entry, said)
    # the same key, the same study: one pseudonym, one file, whoever asked
    (folder,) = (tmp_path / "cohort").iterdir()
    assert folder.name.startswith("2.25.") and len(list(folder.rglob("*.dcm"))) == 1
    actors = n.audited(AuditEvent.RESEARCH_EXPORT)
    assert len(actors) == 3 and actors[1:] == ["admin-api", "admin-api (dashboard)"]


def test_withdraw(node: Callable[..., Node]) -> None:
    n = node()
    queue = JobQueue(n.context.store)
    ways = {"cli": lambda j, why: n.cli("results", "withdraw", str(j), "--reason", why),
            "api": lambda j, why: n.api(f"/jobs/{j}/withdraw", {"reason": why}),
            "dashboard": lambda j, why: n.dashboard(f"/jobs/{j}/withdraw", {"reason": why})}
    for index, entry in enumerate(ENTRIES):
        queue.enqueue(SeriesKey(f"1.2.826.0.3.{index}", 1), [("ct", "ct_body_seg")], now=1)
        job = queue.claim(now=2, lease_s=60)
        assert job is not None
        done, said = ways[entry](job.id, "wrong patient")  # still running: nothing to withdraw
        assert not done and "no results" in said, (entry, said)
        queue.complete(job, {"outputs": {"seg": "2.25.1"}}, now=3)
        assert f"/ui/jobs/{job.id}/withdraw" in n.client.get("/ui/jobs").text  # its button
        done, said = ways[entry](job.id, "  ")
        assert not done, (entry, "a withdrawal says why")
        done, said = ways[entry](job.id, "wrong  patient")
        assert done, (entry, said)
        withdrawn = Rejections(n.context.store).get(job.id)
        assert withdrawn is not None and (withdrawn.reason, withdrawn.comment, withdrawn.state) \
            == ("safety", "wrong patient", "pending"), entry
        done, said = ways[entry](job.id, "wrong patient")
        assert not done and "withdrawn already" in said, (entry, said)
    actors = n.audited(AuditEvent.RESULT_WITHDRAWN)
    assert len(actors) == 3 and actors[1:] == ["admin-api", "admin-api (dashboard)"]


def test_assess(node: Callable[..., Node]) -> None:
    n = node()
    queue = JobQueue(n.context.store)
    ways = {"cli": lambda j, v: n.cli("results", "assess", str(j), v, "--reason", "fine"),
            "api": lambda j, v: n.api(f"/jobs/{j}/verdict", {"verdict": v, "reason": "fine"}),
            "dashboard": lambda j, v: n.dashboard(f"/jobs/{j}/verdict",
                                                  {"verdict": v, "reason": "fine"})}
    for index, entry in enumerate(ENTRIES):
        queue.enqueue(SeriesKey(f"1.2.826.0.4.{index}", 1), [("ct", "ct_body_seg")], now=1)
        job = queue.claim(now=2, lease_s=60)
        assert job is not None
        assert not ways[entry](job.id, "accept")[0], (entry, "nothing to assess yet")
        queue.complete(job, {"outputs": {"seg": "2.25.1"}, "model_version": "1.1.0"}, now=3)
        assert f"/ui/jobs/{job.id}/verdict" in n.client.get("/ui/jobs").text
        assert not ways[entry](job.id, "maybe")[0], (entry, "accept, reject or modify only")
        done, said = ways[entry](job.id, "accept")
        assert done, (entry, said)
        done, said = ways[entry](job.id, "reject")  # the latest verdict counts
        assert done, (entry, said)
    acceptance = Verdicts(n.context.store).acceptance()
    assert acceptance == {("ct_body_seg", "1.1.0"): {
        "assessed": 3, "accept": 0, "reject": 3, "modify": 0, "acceptance_rate": 0.0}}
    assert Verdicts(n.context.store).totals()[("ct_body_seg", "1.1.0", "accept")] == 3
    metrics = n.client.get("/metrics").text  # the dashboard's rejections lowered it
    assert ('ainode_results_assessed_total{model="ct_body_seg",verdict="reject",'
            'version="1.1.0"} 3.0') in metrics
    assert 'ainode_results_acceptance_rate{model="ct_body_seg",version="1.1.0"} 0.0' in metrics
    sources = {v.source for v in Verdicts(n.context.store).listing()}
    assert sources == {"cli", "api", "dashboard"}
    actors = n.audited(AuditEvent.RESULT_ASSESSED)
    assert len(actors) == 6 and actors[2:] == ["admin-api"] * 2 + ["admin-api (dashboard)"] * 2
