"""Several nodes on one PostgreSQL job store (a throwaway cluster, tests/postgres.py) and one
shared data directory: receivers, workers and a sender as separate ``ainode serve --role``
processes, as on separate machines. Each scenario asserts that nothing acknowledged is lost
and that no result reaches Orthanc twice."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest

from bench.ports import listening_sockets
from tests.support.environment import STORESCU, ct_files, free_port, require, wait_for
from tests.support.node import NodeProcess, ct_body_node_sections, storescu, write_config
from tests.support.orthanc import Orthanc, start_orthanc

pytestmark = pytest.mark.integration


@dataclass
class Deployment:
    """Role processes sharing one config, one PostgreSQL store and one data directory; each
    receiver listens on its own port (``AINODE__NODE__DICOM_PORT``)."""

    tmp_path: Path
    config_path: Path
    data_dir: Path
    url: str
    processes: list[NodeProcess] = field(default_factory=list)

    def start(self, role: str, port: int | None = None) -> NodeProcess:
        env = {"AINODE__STORE__URL": self.url}
        if port is not None:
            env["AINODE__NODE__DICOM_PORT"] = str(port)
        name = f"{role}{len(self.processes)}"
        process = NodeProcess(self.config_path, self.data_dir, port or 0,
                              self.tmp_path / f"{name}.log", roles=(role,), env=env)
        self.processes.append(process.start())
        return process

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url) as connection:
            return connection.execute(sql, args or None).fetchall()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()[-1500:]}" for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


@pytest.fixture
def deployment(tmp_path: Path, postgres: Any) -> Iterator[Any]:
    def make(**sections: Any) -> Deployment:
        data_dir = tmp_path / "shared"
        config_path = tmp_path / "node.yaml"
        write_config(config_path, free_port(), data_dir, **sections)
        made = Deployment(tmp_path, config_path, data_dir, postgres.new_database())
        started.append(made)
        return made

    started: list[Deployment] = []
    yield make
    for made in started:
        made.stop()


def _succeeded(output: str) -> int:
    return output.count("Received Store Response (Success)")


def test_two_receivers_two_workers_one_sender_give_one_result_even_when_a_worker_dies(
    deployment: Any, tmp_path: Path,
) -> None:
    """The CT split between two receivers (two storescu runs at once) forms one series and
    one job; the worker running it is SIGKILLed mid-job and the other worker finishes it when
    its lease runs out; the sender delivers one SEG, one SR and one SC to Orthanc."""
    require(STORESCU)
    pacs_port = free_port()
    with start_orthanc(tmp_path, free_port(), pacs_port, free_port()) as pacs:
        sections = ct_body_node_sections(pacs_port)
        sections["inference"] = {**sections["inference"], "lease_s": 5, "job_retry_s": 0.5}
        sections["series"] = {"quiet_seconds": 2, "sweep_interval_s": 0.2}
        nodes = deployment(**sections)
        receivers = [nodes.start("receiver", free_port()) for _ in range(2)]
        first_worker = nodes.start("worker")
        files = ct_files()
        halves = (files[::2], files[1::2])  # interleaved: both receivers see the whole range
        results: list[subprocess.CompletedProcess[str]] = [None, None]  # type: ignore[list-item]

        def send(index: int) -> None:
            results[index] = storescu(receivers[index], *halves[index])

        senders = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(timeout=180)
        assert [_succeeded(r.stderr) for r in results] == [67, 67], nodes.logs()
        assert wait_for(lambda: nodes.query("SELECT state FROM jobs") == [("running",)], 120,
                        0.05), nodes.logs()
        second_worker = nodes.start("worker")
        nodes.start("sender")
        first_worker.kill()  # SIGKILL; its worker process dies with it (PDEATHSIG)
        assert wait_for(lambda: nodes.query("SELECT state FROM outbox") == [("sent",)] * 3,
                        240, 0.2), (nodes.query("SELECT * FROM jobs"), nodes.logs())
        assert nodes.query("SELECT state, attempts FROM jobs") == [("done", 2)]
        assert nodes.query("SELECT COUNT(*), SUM(instance_count) FROM series") == [(1, 134)]
        assert nodes.query("SELECT COUNT(*) FROM instances") == [(134,)]
        assert "job 1 (ct-body on ct_body_seg) done" in second_worker.log()
        assert _one_of_each_result(pacs, files[0])


def _one_of_each_result(pacs: Orthanc, source: Path) -> bool:
    study = pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID
    found = wait_for(lambda: pacs.series_by_modality(study), 30)
    counts = {modality: len(series) for modality, series in found.items()}
    assert counts == {"SEG": 1, "SR": 1, "OT": 1}, counts
    instances = pacs.api("/instances")
    assert len(instances) == 3, instances  # no result delivered twice
    return True


def test_postgresql_restarted_during_ingest_loses_nothing_acknowledged(
    deployment: Any, postgres: Any,
) -> None:
    """With the store down, C-STORE answers 0xA700 at once (the sender keeps the instance);
    after PostgreSQL is back the receiver reconnects by itself, the re-sent instances are
    recorded, and the series runs once with every acknowledged instance."""
    require(STORESCU)
    nodes = deployment(series={"quiet_seconds": 2, "sweep_interval_s": 0.2},
                       pipelines=[{"name": "ct-body", "match": {"modality": "CT"},
                                   "model": "ct_body_seg", "outputs": []}],
                       inference={"model_repository": str(Path(__file__).parents[2]
                                                          / "model_repository")})
    receiver = nodes.start("receiver", free_port())
    nodes.start("worker")
    files = ct_files()
    before = storescu(receiver, *files[:40])
    assert _succeeded(before.stderr) == 40, before.stderr[-2000:]
    postgres.stop("immediate")
    try:
        during = storescu(receiver, *files[40:60], timeout=120)
    finally:
        postgres.start()
    # 0xA700; storescu stops at the first refusal (the rest stay with the sender)
    assert _succeeded(during.stderr) == 0, during.stderr[-3000:]
    assert "Received Store Response (Refused: OutOfResources)" in during.stderr, (
        during.stderr[-3000:])
    # the PACS retries until the node answers again (it reconnects by itself), then sends the
    # rest
    assert wait_for(lambda: _succeeded(storescu(receiver, files[40]).stderr) == 1, 60, 0.5), (
        receiver.log()[-3000:])
    after = storescu(receiver, *files[41:])
    assert _succeeded(after.stderr) == 93, (after.stderr[-2000:], receiver.log()[-3000:])
    # the outage may outlast the quiet period: then the series completed with 41 instances
    # and the rest opened revision 2, whose job (superseding the first) covers all 134
    final_job = "SELECT state FROM jobs WHERE revision = (SELECT MAX(revision) FROM series)"
    assert wait_for(lambda: nodes.query(final_job) == [("done",)], 180, 0.2), nodes.logs()
    assert nodes.query("SELECT COUNT(*) FROM jobs WHERE state NOT IN ('done', 'superseded')"
                       ) == [(0,)]
    assert nodes.query("SELECT COUNT(*) FROM instances") == [(134,)]
    assert nodes.query("SELECT SUM(instance_count), SUM(duplicate_count) FROM series") == [
        (134, 0)]
    assert "job store unavailable" in receiver.log()


def test_a_node_refuses_a_store_with_a_newer_schema(deployment: Any) -> None:
    nodes = deployment()
    import psycopg

    ainode = str(Path(sys.executable).parent / "ainode")
    env = {**os.environ, "AINODE__STORE__URL": nodes.url}
    ready = subprocess.run([ainode, "status", "--config", str(nodes.config_path)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert ready.returncode == 0, ready.stderr  # creates the schema at this release's version
    with psycopg.connect(nodes.url) as connection:
        connection.execute("INSERT INTO ainode_schema (version, applied_at) VALUES (99, 0)")
    for command in (["serve"], ["serve", "--role", "worker"], ["status"]):
        refused = subprocess.run([ainode, *command, "--config", str(nodes.config_path)],
                                 env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1, (command, refused.stdout, refused.stderr)
        message = " ".join(refused.stderr.split())  # as wrapped for the terminal
        assert "schema version 99, newer than this ainode knows" in message, refused.stderr
        assert "unused@" not in refused.stderr  # the password is never printed


def test_receiver_processes_share_the_port_and_lose_nothing(node_factory: Any) -> None:
    """``node.receiver_processes: 3`` under ``ainode serve`` (SQLite): three processes listen
    on the one port, and four senders at once (the CT in quarters, interleaved) all hear
    success for every instance, which forms one series."""
    require(STORESCU)
    node = node_factory(node={"receiver_processes": 3}, series={"quiet_seconds": 2}).start()
    assert wait_for(lambda: listening_sockets(node.port) == 3, 30), listening_sockets(node.port)
    files = ct_files()
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda i: storescu(node, *files[i::4]), range(4)))
    assert sum(_succeeded(r.stderr) for r in runs) == 134, [r.stderr[-500:] for r in runs]
    assert wait_for(lambda: node.query("SELECT state, instance_count FROM series") == [
        ("complete", 134)], 30), node.query("SELECT * FROM series")
    assert len(re.findall(r"receiver-\d process started", node.log())) == 3
