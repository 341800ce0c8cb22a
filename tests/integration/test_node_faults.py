"""Faults around the job path, each with the real node: a node killed mid-job, routing that
fails, a worker that cannot warm up, an index lost with its AE titles, a hostile Series
Instance UID, and patient data that must not reach any log line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.roles.node import Node
from node.settings import load_settings
from tests.support.environment import (
    CT_DIR,
    DCMTK_ENV,
    ROOT,
    STORESCU,
    ct_files,
    free_port,
    require,
    wait_for,
)
from tests.support.node import storescu
from tests.support.orthanc import ORTHANC

pytestmark = pytest.mark.integration
REPOSITORY = str(ROOT / "model_repository")
CT_BODY = {"name": "ct-body", "match": {"modality": "CT"}, "model": "ct_body_seg",
           "outputs": []}


def test_a_node_killed_mid_job_resumes_the_job_at_restart(node_factory: Any) -> None:
    """SIGKILL while the job runs: at restart the job is queued again at once (not after a
    lease of minutes) and finishes; the interrupted attempt is counted."""
    require(STORESCU)
    node = node_factory(series={"quiet_seconds": 1},
                        inference={"model_repository": REPOSITORY, "lease_s": 600},
                        pipelines=[CT_BODY]).start()
    assert storescu(node, *ct_files()).returncode == 0
    assert wait_for(lambda: node.query("SELECT state FROM jobs") == [("running",)], 60, 0.05), (
        node.query("SELECT * FROM jobs"), node.log()[-2000:])
    node.kill()
    node.start()
    assert wait_for(lambda: node.query("SELECT state, attempts FROM jobs") == [("done", 2)],
                    60, 0.2), (node.query("SELECT * FROM jobs"), node.log()[-2000:])


def _in_process_node(tmp_path: Path, **sections: Any) -> Node:
    port = free_port()
    config = {"node": {"dicom_port": port, "bind": "127.0.0.1", "data_dir": str(tmp_path / "var"),
                       "min_free_disk_mb": 64},
              "peers": [{"name": "MODALITY", "ae_title": "STORESCU", "host": "127.0.0.1",
                         "port": 11113}],
              "series": {"quiet_seconds": 60, "sweep_interval_s": 0.1},
              "inference": {"model_repository": REPOSITORY}, **sections}
    path = tmp_path / "node.yaml"
    path.write_text(json.dumps(config))
    return Node(load_settings(path, environ={}))


def _with_expected_count(tmp_path: Path, count: int) -> list[Path]:
    """The first ``count`` CT slices, declaring (0020,1209) = ``count``."""
    folder = tmp_path / "declared"
    folder.mkdir()
    files = []
    for source in ct_files()[:count]:
        dataset = pydicom.dcmread(source)
        dataset.NumberOfSeriesRelatedInstances = count
        target = folder / source.name
        dataset.save_as(target, enforce_file_format=True)
        files.append(target)
    return files


def test_routing_that_fails_is_retried_and_the_instance_is_still_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The series completes inside the C-STORE handler (expected count reached) and routing
    raises twice: every instance is answered Success (it is stored), and the series is routed
    from the job store without a restart."""
    require(STORESCU)
    import node.jobs.orchestrator

    real_route = node.jobs.orchestrator.route
    calls: list[int] = []

    def flaky_route(*args: Any) -> Any:
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("injected routing fault")
        return real_route(*args)

    monkeypatch.setattr(node.jobs.orchestrator, "route", flaky_route)
    monkeypatch.setattr(node.jobs.orchestrator.Orchestrator, "_run", lambda self, job: None)
    monkeypatch.setattr(node.settings.InferenceSection, "retry_policy",
                        property(lambda self: node.runtime.retry.RetryPolicy(0.2, 0.5, 60)))
    instance = _in_process_node(tmp_path, pipelines=[CT_BODY])
    instance.start()
    try:
        files = _with_expected_count(tmp_path, 3)
        result = subprocess.run(
            [STORESCU, "-v", "-aet", "STORESCU", "-aec", "AINODE", "127.0.0.1",
             str(instance.settings.node.dicom_port), *map(str, files)],
            env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stderr.count("Received Store Response (Success)") == 3, result.stderr
        (series,) = instance.store.list_series()
        assert series.completion_reason == "expected_count"
        assert wait_for(lambda: instance.store.list_series()[0].route_state == "routed", 20)
        assert len(calls) == 3
    finally:
        instance.stop()


def test_a_worker_that_fails_to_warm_up_keeps_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warm-up import fails once (e.g. a transient I/O error): the worker logs it, tries
    again, and runs the job; a loop whose thread died anyway is restarted by the sweeper."""
    require(STORESCU)
    import node.jobs.orchestrator

    failures: list[int] = []
    real_warm_up = node.jobs.orchestrator.Orchestrator._warm_up

    def flaky_warm_up(self: Any, *args: Any) -> None:
        if not failures:
            failures.append(1)
            raise ImportError("injected warm-up fault")
        real_warm_up(self, *args)

    monkeypatch.setattr(node.jobs.orchestrator.Orchestrator, "_warm_up", flaky_warm_up)
    instance = _in_process_node(tmp_path, pipelines=[CT_BODY],
                                series={"quiet_seconds": 0.5, "sweep_interval_s": 0.1})
    instance.start()
    try:
        (worker,) = instance.orchestrator._loops
        worker.stop(timeout_s=30)  # a worker thread that died ...
        worker._stopping.clear()
        assert not worker.alive
        assert wait_for(lambda: worker.alive, 10), "... is restarted by the sweeper"
        files = ct_files()
        result = subprocess.run(
            [STORESCU, "-aet", "STORESCU", "-aec", "AINODE", "127.0.0.1",
             str(instance.settings.node.dicom_port), *map(str, files)],
            env=DCMTK_ENV, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        queue = node.jobs.orchestrator.JobQueue(instance.store)
        assert wait_for(lambda: [j.state.value for j in queue.jobs()] == ["done"], 120, 0.2), (
            queue.jobs())
        assert failures == [1]
    finally:
        instance.stop()


@pytest.mark.parametrize("receive_to_disk", [True, False])
def test_instances_reindexed_after_losing_the_index_keep_their_calling_ae(
    node_factory: Any, receive_to_disk: bool
) -> None:
    """The index is lost (as a power loss may roll back recent commits): recovery re-indexes
    the spool with the AE titles recorded in each file's meta, so calling_ae rules and
    reply_to_sender still work."""
    require(STORESCU)
    node = node_factory(node={"receive_to_disk": receive_to_disk, "bind": "127.0.0.1",
                              "min_free_disk_mb": 64}).start()
    assert storescu(node, *ct_files()[:3]).returncode == 0
    node.stop()
    for suffix in ("", "-wal", "-shm"):
        (node.data_dir / f"jobs.sqlite3{suffix}").unlink(missing_ok=True)
    node.start()
    assert node.query("SELECT DISTINCT calling_ae, called_ae FROM series") == [
        ("STORESCU", "AINODE")]
    meta = pydicom.filereader.read_file_meta_info(node.stored_files()[0])
    assert meta.SendingApplicationEntityTitle == "STORESCU"
    assert meta.ReceivingApplicationEntityTitle == "AINODE"


def test_a_hostile_series_uid_cannot_make_the_node_write_outside_its_data_dir(
    tmp_path: Path, node_factory: Any
) -> None:
    require(STORESCU)
    hostile = "../../escaped"
    folder = tmp_path / "hostile"
    folder.mkdir()
    for source in ct_files():
        dataset = pydicom.dcmread(source)
        with warnings.catch_warnings():  # pydicom rightly says it is no UID
            warnings.simplefilter("ignore")
            dataset.SeriesInstanceUID = hostile
            dataset.save_as(folder / source.name, enforce_file_format=True)
    node = node_factory(series={"quiet_seconds": 1}, inference={"model_repository": REPOSITORY},
                        pipelines=[CT_BODY]).start()
    result = storescu(node, *sorted(folder.iterdir()))
    assert result.returncode == 0, result.stderr
    assert wait_for(lambda: node.query("SELECT state FROM jobs") == [("done",)], 120, 0.2), (
        node.query("SELECT * FROM jobs"), node.log()[-2000:])
    (result_json,) = node.query("SELECT result FROM jobs")[0]
    written = Path(json.loads(result_json)["result_dir"]).resolve()
    assert written.is_relative_to(node.data_dir.resolve() / "results")
    assert (written / "labels.npy").exists()
    outside = [p for p in tmp_path.rglob("*") if "escaped" in p.name]
    assert outside == []


def test_no_patient_data_in_any_line_the_demo_prints(tmp_path: Path) -> None:
    """`make demo`'s loop (Orthanc -> node -> SEG, SR, SC -> Orthanc) on the sample CT, whose
    patient name highdicom used to print in a warning: no line of its output, the node's log
    included, carries the patient's name, ID or birth date."""
    require(ORTHANC)
    identifying = set()
    for source in (pydicom.dcmread(path, stop_before_pixels=True)
                   for path in (ct_files()[0], next((CT_DIR.parent / "mr-brain").glob("*.dcm")))):
        identifying |= {str(v) for v in (source.PatientName, source.PatientID,
                                         source.get("PatientBirthDate", "")) if str(v)}
    assert len(identifying) >= 3
    demo = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")],
                          env={**os.environ, "AINODE_DEMO_DIR": str(tmp_path / "demo")},
                          capture_output=True, text=True, timeout=900)
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output[-3000:]
    assert "in Orthanc now:" in output and "SEG" in output
    # the head MR through the real pretrained network, its brain volume printed (deepbet: 1543)
    assert re.search(r"mr-brain: mr_brain_extraction 1\.0\.2 .*brain volume 154\d\.\d ml",
                     output), output[-3000:]
    leaks = [line for line in output.splitlines() if any(v in line for v in identifying)]
    assert leaks == []


def test_a_corrupt_spool_file_fails_its_job_with_a_reason_and_the_others_run(
        node_factory: Any, tmp_path: Path) -> None:
    """Two films received; one's spool file is then cut short (a disk error, a bad copy):
    its job fails with a reason naming the problem, the other film's job is done."""
    from tests.support.radiographs import radiograph

    require(STORESCU)
    node = node_factory(
        series={"quiet_seconds": 3, "sweep_interval_s": 0.2},
        inference={"model_repository": REPOSITORY, "job_attempts": 2, "job_retry_s": 0.2},
        pipelines=[{"name": "cxr-mass", "match": {"modality": ["CR", "DX"]},
                    "model": "cxr_mass_cls", "outputs": []}]).start()
    films = [radiograph(tmp_path, kind, f"P-{kind}") for kind in ("mass", "plain")]
    assert storescu(node, *films).returncode == 0
    damaged = pydicom.dcmread(films[0], stop_before_pixels=True)
    (path,) = [p for p in node.stored_files()
               if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
               == damaged.SOPInstanceUID]
    path.write_bytes(path.read_bytes()[:4000])  # before the series completes
    assert wait_for(lambda: sorted(s for (s,) in node.query("SELECT state FROM jobs"))
                    == ["done", "failed"], 120, 0.3), (node.query("SELECT * FROM jobs"),
                                                       node.log()[-2000:])
    ((error,),) = node.query("SELECT error FROM jobs WHERE state='failed'")
    assert error, "a failed job names its reason"
    ((series,),) = node.query("SELECT series_uid FROM jobs WHERE state='failed'")
    assert series == str(damaged.SeriesInstanceUID)
    assert "Traceback" not in node.log()


def test_a_job_store_locked_for_seconds_loses_nothing(node_factory: Any) -> None:
    """Another process holds the SQLite job store's write lock for 4 s while a modality
    sends: each instance is acknowledged once the lock is gone (the receiver waits for it)
    or refused with 0xA700; sent again, nothing is lost or indexed twice."""
    import re
    import sqlite3
    import threading

    require(STORESCU)
    node = node_factory().start()
    files = ct_files()[:8]
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        db = sqlite3.connect(node.data_dir / "jobs.sqlite3", isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(4)
        db.execute("ROLLBACK")
        db.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(10)
    first = storescu(node, *files)
    release.set()
    holder.join()
    statuses = re.findall(r"Received Store Response \(([^)]*)\)", first.stdout + first.stderr)
    assert statuses and all(s in ("Success", "Refused: OutOfResources") for s in statuses), (
        statuses)
    assert storescu(node, *files).returncode == 0  # the modality sends again
    sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    indexed = [uid for (uid,) in node.query("SELECT sop_uid FROM instances")]
    assert sorted(indexed) == sorted(sent)
    assert node.alive and "Traceback" not in node.log()


def test_no_patient_data_in_any_log_line_of_any_process_at_debug_level(
        node_factory: Any) -> None:
    """The real CT through the whole node (receiver, worker and its worker processes, sender)
    at log level debug, results delivered to a real dcmtk storescp: no line of the node's
    log, from any process and any library, holds the patient's name, ID or birth date."""
    require(STORESCU)
    source = pydicom.dcmread(ct_files()[0], stop_before_pixels=True)
    identifying = {str(v) for v in (source.PatientName, source.PatientID,
                                    source.get("PatientBirthDate", "")) if str(v)}
    assert identifying
    pacs_port = free_port()
    node = node_factory(
        series={"quiet_seconds": 1},
        peers=[{"name": "PACS", "ae_title": "STORESCP", "host": "127.0.0.1",
                "port": pacs_port},
               {"name": "MODALITY", "ae_title": "STORESCU", "host": "127.0.0.1",
                "port": 11113}],
        inference={"model_repository": REPOSITORY},
        pipelines=[{**CT_BODY, "outputs": ["seg", "sr", "sc"], "destinations": ["PACS"]}])
    node.log_level = "debug"
    pacs_dir = node.data_dir.parent / "pacs"
    pacs_dir.mkdir(parents=True)
    with subprocess.Popen(["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(pacs_dir),
                           str(pacs_port)], env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) as pacs:
        try:
            node.start()
            assert storescu(node, *ct_files()).returncode == 0
            assert wait_for(lambda: node.query(
                "SELECT COUNT(*) FROM outbox WHERE state='sent'") == [(3,)], 180, 0.5), (
                node.query("SELECT * FROM jobs"), node.log()[-2000:])
            node.stop()
        finally:
            pacs.terminate()
    log = node.log()
    assert " DEBUG " in log and "[worker]" in log and "[sender]" in log
    leaks = [line for line in log.splitlines() if any(v in line for v in identifying)]
    assert leaks == [], leaks[:5]
