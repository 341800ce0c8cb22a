"""Inference against the real model repository, onnxruntime and a real tritonserver."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from node.domain import JobState
from node.imaging.volume import load_series
from node.infer.embedded import EmbeddedBackend
from node.infer.repository import load_model_spec
from node.infer.runner import run_heatmap, run_model
from node.infer.triton import TritonBackend
from node.jobs.orchestrator import Orchestrator
from node.settings import load_settings
from node.store.jobs import JobStore
from node.store.queue import JobQueue
from tests.support.environment import CT_DIR, ROOT, ct_files, free_port, require, wait_for
from tests.support.independent import body_gas_dense, read_ct
from tests.support.node import store_with_ct, storescu
from tests.support.triton import TritonProcess

pytestmark = pytest.mark.integration
REPOSITORY = ROOT / "model_repository"


@pytest.fixture(scope="module")
def ct_volume() -> Any:
    return load_series(ct_files())


@pytest.fixture(scope="module")
def embedded_labels(ct_volume: Any) -> np.ndarray:
    spec = load_model_spec(REPOSITORY, "ct_body_seg")
    return run_model(ct_volume, spec, EmbeddedBackend())


def test_label_map_matches_an_independent_computation(ct_volume: Any,
                                                      embedded_labels: np.ndarray) -> None:
    hu, uids = read_ct(CT_DIR)
    expected = body_gas_dense(hu)
    by_uid = {ref.sop_instance_uid: k for k, ref in enumerate(ct_volume.slices)}
    ours = np.stack([embedded_labels[by_uid[uid]] for uid in uids])
    assert ours.shape == expected.shape == (134, 512, 512)
    assert np.array_equal(ours, expected)
    counts = np.bincount(ours.ravel(), minlength=4)
    assert counts[1] > 5_000_000 and counts[2] > 300_000 and counts[3] > 100_000
    # most gas is in the lung bases, in the upper (cranial) part of this abdominal CT
    gas_slices = np.flatnonzero((expected == 2).sum(axis=(1, 2)) > 5000)
    assert gas_slices.min() > 80


@pytest.mark.parametrize(("protocol", "shared_memory"),
                         [("grpc", False), ("grpc", True), ("http", False)])
def test_triton_and_embedded_give_identical_labels(
    triton_grpc_url: str, ct_volume: Any, embedded_labels: np.ndarray, protocol: str,
    shared_memory: bool,
) -> None:
    spec = load_model_spec(REPOSITORY, "ct_body_seg")
    url = triton_grpc_url
    if protocol == "http":
        import os

        url = f"127.0.0.1:{os.environ.get('TRITON_HTTP_PORT', '8000')}"
    backend = TritonBackend(url, protocol=protocol, shared_memory=shared_memory)
    try:
        backend.check(spec)
        labels = run_model(ct_volume, spec, backend)
    finally:
        backend.close()
    assert np.array_equal(labels, embedded_labels)


def _orchestrator(tmp_path: Path, store: JobStore, backend: Any, clock: Any,
                  model: str = "ct_body_seg") -> Orchestrator:
    config = tmp_path / "node.yaml"
    config.write_text(json.dumps({
        "node": {"data_dir": str(tmp_path / "var")},
        "inference": {"model_repository": str(REPOSITORY), "job_retry_s": 5},
        "pipelines": [{"name": "ct-body", "match": {"modality": "CT"}, "model": model,
                       "outputs": []}],
    }))
    return Orchestrator(load_settings(config, environ={}), store, backend, clock)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_triton_crash_mid_job_is_retried_and_succeeds(tmp_path: Path,
                                                      private_triton: TritonProcess) -> None:
    private_triton.up()
    store, key = store_with_ct(tmp_path)
    clock = Clock()
    backend = TritonBackend(private_triton.grpc_url, retries=0)
    orchestrator = _orchestrator(tmp_path, store, backend, clock)
    assert orchestrator.series_complete(key) == 1
    queue = JobQueue(store)

    worker = threading.Thread(target=orchestrator.run_next)
    worker.start()
    # crash the server while the job is loading / inferring (load ~1 s, inference ~3 s)
    time.sleep(1.5)
    private_triton.crash()
    worker.join(timeout=120)
    (job,) = queue.jobs()
    assert job.state == JobState.QUEUED and job.attempts == 1, job
    assert "Triton" in (job.error or "") or "BackendUnavailable" in (job.error or "")

    clock.now += 600  # past the retry delay (at most inference.max_job_retry_s)
    assert orchestrator.run_next() is not None  # server still down: retried again
    (job,) = queue.jobs()
    assert job.state == JobState.QUEUED and job.attempts == 2

    private_triton.up()
    clock.now += 600
    assert orchestrator.run_next() is not None
    (job,) = queue.jobs()
    assert job.state == JobState.DONE, job
    assert job.result and job.result["backend"] == "triton"
    assert job.result["labels"]["gas"]["volume_ml"] > 500
    backend.close()


def test_a_triton_slower_than_the_timeout_is_retried_and_the_job_succeeds(
        tmp_path: Path, private_triton: TritonProcess) -> None:
    """tritonserver frozen (SIGSTOP) while the job runs: the request times out after
    inference.timeout_s, the job is retried (the attempt not counted: an outage), and once
    the server answers again (SIGCONT) the retried job is done."""
    import os
    import signal

    private_triton.up()
    store, key = store_with_ct(tmp_path)
    clock = Clock()
    backend = TritonBackend(private_triton.grpc_url, retries=0, timeout_s=20)
    orchestrator = _orchestrator(tmp_path, store, backend, clock)
    orchestrator.series_complete(key)
    os.kill(private_triton.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert orchestrator.run_next() is not None
        assert time.monotonic() - started < 90  # bounded by the timeout, not hung
        (job,) = JobQueue(store).jobs()
        assert job.state == JobState.QUEUED and job.error, job
        assert "Triton" in job.error
    finally:
        os.kill(private_triton.pid, signal.SIGCONT)
    for _ in range(3):  # the thawed server may first finish the request it was frozen in
        clock.now += 600
        assert orchestrator.run_next() is not None
        (job,) = JobQueue(store).jobs()
        if job.state != JobState.QUEUED:
            break
    assert job.state == JobState.DONE, job
    backend.close()


def test_a_model_unloaded_mid_run_fails_the_job_with_the_reason_and_a_requeue_finishes_it(
        tmp_path: Path, private_triton: TritonProcess) -> None:
    """Triton in explicit model control; the model is unloaded while the job is being
    prepared: the job fails with Triton's reason (nothing half-written is delivered); once
    the model is loaded again, the operator's requeue finishes it."""
    import tritonclient.grpc as grpcclient

    private_triton.extra_args = "--model-control-mode=explicit --load-model=*"
    private_triton.up()
    store, key = store_with_ct(tmp_path)
    clock = Clock()
    backend = TritonBackend(private_triton.grpc_url, retries=0)
    orchestrator = _orchestrator(tmp_path, store, backend, clock)
    orchestrator.series_complete(key)
    control = grpcclient.InferenceServerClient(private_triton.grpc_url)
    assert control.is_model_ready("ct_body_seg")
    worker = threading.Thread(target=orchestrator.run_next)
    worker.start()
    time.sleep(0.5)  # the job has started: loading the CT (about a second)
    control.unload_model("ct_body_seg")
    worker.join(timeout=120)
    (job,) = JobQueue(store).jobs()
    assert job.state == JobState.FAILED and job.error and "ct_body_seg" in job.error, job
    control.load_model("ct_body_seg")
    assert JobQueue(store).requeue([job.id], clock.now) == [job.id]
    assert orchestrator.run_next() is not None
    (job,) = JobQueue(store).jobs()
    assert job.state == JobState.DONE, job
    control.close()
    backend.close()


def test_a_triton_outage_is_retried_for_the_window_then_the_job_fails(tmp_path: Path) -> None:
    """Nothing listens where Triton should be (a real refused connection): the job waits out
    an outage far longer than its attempts (no attempt is used up), then fails with the
    reason once inference.retry_window_s (1 h by default) has passed."""
    store, key = store_with_ct(tmp_path)
    clock = Clock()
    backend = TritonBackend(f"127.0.0.1:{free_port()}", retries=0, timeout_s=5)
    orchestrator = _orchestrator(tmp_path, store, backend, clock)
    orchestrator.series_complete(key)
    queue = JobQueue(store)
    started = clock.now
    delays = []
    while clock.now - started < 3000:  # 50 minutes down: far more than job_attempts (5)
        assert orchestrator.run_next() is not None
        (job,) = queue.jobs()
        assert job.state == JobState.QUEUED, job
        ((not_before,),) = store.query("SELECT not_before FROM jobs")
        waited = not_before - clock.now
        delays.append(waited)
        clock.now += waited
    assert len(delays) > 5 and delays == sorted(delays) and max(delays) <= 300
    clock.now = started + 3601
    assert orchestrator.run_next() is not None
    (job,) = queue.jobs()
    assert job.state == JobState.FAILED
    assert job.error and job.error.startswith("backend unavailable for 3600 s")
    backend.close()


def test_unknown_model_fails_the_job_with_that_reason(tmp_path: Path) -> None:
    store, key = store_with_ct(tmp_path)
    orchestrator = _orchestrator(tmp_path, store, EmbeddedBackend(), Clock(), model="no_such")
    orchestrator.series_complete(key)
    orchestrator.run_next()
    (job,) = JobQueue(store).jobs()
    assert job.state == JobState.FAILED
    assert job.error == f"model 'no_such' is not in {REPOSITORY}"


def test_a_misspelt_model_is_refused_at_start_and_readyz_names_a_model_triton_lacks(
        tmp_path: Path, node_factory: Any, triton_grpc_url: str) -> None:
    """Issue 24 §4: ``config check`` and ``serve`` refuse a pipeline whose model is not in the
    model repository (exit 2, naming it); with Triton as the backend, /readyz is not ready
    while Triton has not loaded a model a pipeline names, and says which."""
    import shutil
    import subprocess
    import sys

    from tests.support.environment import ROOT, wait_port
    from tests.support.node import http_call

    ainode = str(Path(sys.executable).parent / "ainode")
    config = tmp_path / "misspelt.yaml"
    config.write_text(json.dumps({
        "node": {"data_dir": str(tmp_path / "var")},
        "inference": {"model_repository": str(REPOSITORY)},
        "pipelines": [{"name": "ct", "match": {"modality": "CT"}, "model": "ct_body_sge"}]}))
    for command in (["config", "check", str(config)], ["serve", "--config", str(config)]):
        result = subprocess.run([ainode, *command], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (command, result.stderr)
        message = " ".join(result.stderr.split())
        assert "pipelines.0 (ct): model 'ct_body_sge' is not in the model repository" in message
        assert "ct_body_seg" in message  # what the repository has

    repository = tmp_path / "repository"  # ct_body_seg_v2: here, but not on Triton
    shutil.copytree(ROOT / "model_repository" / "ct_body_seg", repository / "ct_body_seg_v2")
    http_port = free_port()
    node = node_factory(node={"http_port": http_port}, inference={
        "backend": "triton", "triton_url": triton_grpc_url, "triton_protocol": "grpc",
        "model_repository": str(repository)},
        pipelines=[{"name": "ct", "match": {"modality": "CT"}, "model": "ct_body_seg_v2"}])
    node.start()
    wait_port(http_port, timeout=60, proc=node.proc)
    status, ready = http_call(http_port, "/readyz", timeout=30)
    assert status == 503 and "ct_body_seg_v2" in ready["failed"]["triton"], ready


GEOMETRY_CASES = {
    "dicom2nifti_failing/sliceincrement/001": "missing slices or non-uniform spacing",
    "dicom2nifti_failing/gantrytilting/001": "gantry tilt",
    "dicom2nifti_failing/sliceorientation/001": "mixed orientation",
    "dicom2nifti_failing/slicecount/001": "too few slices",
    "dicom2nifti_failing/notavolume/001": "duplicate slice positions",
    "dicom-numpy_dupe-positions": "duplicate slice positions",
    "dcm_qa_ct/GE_headCT_tilt_varspacing": "gantry tilt",
}


def test_node_runs_the_pipeline_end_to_end_and_records_geometry_reasons(node_factory) -> None:  # type: ignore[no-untyped-def]
    """Real node process, real dcmtk sender: the CT is segmented onto its own grid; each broken
    series ends in a failed job whose reason a person can read; an MR-only rule skips."""
    require("/usr/bin/storescu")
    node = node_factory(
        series={"quiet_seconds": 1},
        inference={"model_repository": str(REPOSITORY)},
        pipelines=[
            {"name": "ct-body", "match": {"modality": "CT", "min_instances": 20},
             "model": "ct_body_seg", "outputs": []},
            {"name": "probe", "match": {"max_instances": 19, "modality": ["CT", "MR"]},
             "model": "ct_body_seg", "outputs": []},
        ],
    ).start()
    bad = Path(CT_DIR).parent / "bad-input"
    for folder in GEOMETRY_CASES:
        result = storescu(node, *sorted((bad / folder).rglob("*.dcm")))
        assert result.returncode == 0, result.stderr
    assert storescu(node, *ct_files()).returncode == 0

    def settled() -> bool:
        rows = node.query("SELECT state FROM jobs")
        return bool(rows) and len(rows) >= 8 and all(r[0] in ("done", "failed") for r in rows)

    assert wait_for(settled, 180, 0.5), (node.query("SELECT * FROM jobs"), node.log()[-3000:])
    jobs = node.query("SELECT j.pipeline, j.state, j.error, j.result, s.series_uid FROM jobs j "
                      "JOIN series s ON s.series_uid=j.series_uid AND s.revision=j.revision")
    ct_uid = str(load_series(ct_files()[:3]).series_instance_uid)
    ct_jobs = [j for j in jobs if j[4] == ct_uid]
    assert [(j[0], j[1]) for j in ct_jobs] == [("ct-body", "done")], ct_jobs
    result = json.loads(ct_jobs[0][3])
    labels = np.load(Path(result["result_dir"]) / "labels.npy")
    slices = json.loads((Path(result["result_dir"]) / "slices.json").read_text())
    hu, uids = read_ct(CT_DIR)
    order = {uid: k for k, (uid, _frame) in enumerate(slices)}
    assert np.array_equal(np.stack([labels[order[u]] for u in uids]), body_gas_dense(hu))

    errors = sorted(j[2] for j in jobs if j[4] != ct_uid)
    assert all(j[1] == "failed" for j in jobs if j[4] != ct_uid)
    for reason in GEOMETRY_CASES.values():
        assert any(reason in e for e in errors), (reason, errors)
    assert node.alive and "Traceback" not in node.log()


def test_unmatched_series_is_recorded_as_skipped(node_factory) -> None:  # type: ignore[no-untyped-def]
    require("/usr/bin/storescu")
    node = node_factory(series={"quiet_seconds": 1}, pipelines=[
        {"name": "mr-only", "match": {"modality": "MR"}, "model": "ct_body_seg"}]).start()
    assert storescu(node, *ct_files()[:5]).returncode == 0
    assert wait_for(lambda: node.query("SELECT route_state, route_detail FROM series")
                    == [("skipped", "no pipeline matched")], 15)
    assert node.query("SELECT COUNT(*) FROM jobs") == [(0,)]


def _with_lesion(volume: Any, centre: tuple[int, int, int], radius_mm: float,
                 contrast: float) -> tuple[Any, np.ndarray]:
    """A crop of the CT around ``centre`` with a synthetic sphere, and the sphere's mask."""
    z, y, x = centre
    crop = volume.voxels[z - 20:z + 20, y - 80:y + 80, x - 80:x + 80].copy()
    spacing = np.array(volume.spacing)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in crop.shape], indexing="ij"), axis=-1)
    distance = np.linalg.norm((grid - np.array(crop.shape) // 2) * spacing, axis=-1)
    crop += np.where(distance <= radius_mm, contrast, 0).astype(np.float32)
    cropped = replace(volume, voxels=crop, slices=volume.slices[z - 20:z + 20])
    return cropped, distance <= radius_mm


def test_lesion_unet_finds_a_synthetic_lesion_through_sliding_window(ct_volume: Any) -> None:
    """A 10 mm sphere 90 HU brighter than the liver is found where it was put, and the same
    crop without it has no lesion there. (The demonstration model also marks a few
    false-positive regions elsewhere; see training.json and the README.)"""
    spec = load_model_spec(REPOSITORY, "ct_lesion_unet")
    assert spec.sliding_window is not None and spec.postprocess
    # liver, right upper abdomen: soft tissue around (z 95, row 230, column 170)
    region = ct_volume.voxels[95, 220:240, 160:180]
    assert 0 < float(region.mean()) < 200
    volume, truth = _with_lesion(ct_volume, (95, 230, 170), radius_mm=10, contrast=90)
    labels = run_model(volume, spec, EmbeddedBackend())
    assert labels.shape == truth.shape
    found = labels == 1
    assert (found & truth).sum() > 0.5 * truth.sum()
    plain = replace(volume, voxels=ct_volume.voxels[75:115, 150:310, 90:250].copy())
    assert (run_model(plain, spec, EmbeddedBackend())[truth] == 1).sum() == 0


def test_lesion_unet_on_triton_equals_embedded(triton_grpc_url: str, ct_volume: Any) -> None:
    spec = load_model_spec(REPOSITORY, "ct_lesion_unet")
    volume, _truth = _with_lesion(ct_volume, (95, 230, 170), radius_mm=8, contrast=80)
    backend = TritonBackend(triton_grpc_url)
    try:
        assert np.array_equal(run_model(volume, spec, backend),
                              run_model(volume, spec, EmbeddedBackend()))
    finally:
        backend.close()


def test_two_patients_at_once_through_triton_shared_memory_never_mix(
    triton_grpc_url: str, ct_volume: Any
) -> None:
    """Two workers share one Triton backend with system shared memory and run two different
    series at the same time, with tensors of the same size (every sliding-window ROI): each
    result must equal that series' own embedded result, never the other's."""
    spec = load_model_spec(REPOSITORY, "ct_lesion_unet")
    first, _ = _with_lesion(ct_volume, (95, 230, 170), radius_mm=10, contrast=90)
    second, _ = _with_lesion(ct_volume, (60, 250, 300), radius_mm=14, contrast=120)
    second = replace(second, voxels=np.ascontiguousarray(second.voxels[:, :, ::-1]))
    expected = [run_model(v, spec, EmbeddedBackend()) for v in (first, second)]
    assert not np.array_equal(expected[0], expected[1])
    backend = TritonBackend(triton_grpc_url, shared_memory=True)
    results: dict[int, list[np.ndarray]] = {0: [], 1: []}
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def work(index: int, volume: Any) -> None:
        try:
            start.wait(timeout=60)
            for _ in range(2):
                results[index].append(run_model(volume, spec, backend))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i, v)) for i, v in enumerate((first, second))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
    finally:
        backend.close()
    assert not failures, failures
    for index in (0, 1):
        assert len(results[index]) == 2
        for labels in results[index]:
            assert np.array_equal(labels, expected[index]), f"series {index} got other data"


def test_mr_head_mask_on_triton_equals_embedded(triton_grpc_url: str) -> None:
    volume = load_series(sorted((CT_DIR.parent / "mr-brain").glob("*.dcm")))
    spec = load_model_spec(REPOSITORY, "mr_head_mask")
    backend = TritonBackend(triton_grpc_url)
    try:
        backend.check(spec)
        on_triton = run_model(volume, spec, backend)
    finally:
        backend.close()
    embedded = run_model(volume, spec, EmbeddedBackend())
    assert embedded.any() and np.array_equal(on_triton, embedded)


@pytest.mark.parametrize("syntax", ["RG1_J2KI", "RG1_JLSN"])
def test_cxr_lung_seg_on_both_backends_equals_the_twin(triton_grpc_url: str, syntax: str) -> None:
    """The chest radiograph in JPEG 2000 and JPEG-LS: a one-slice volume, lung fields equal to
    the independent computation on both backends."""
    from tests.support.independent import lung_fields, read_radiograph

    path = CT_DIR.parent / "cxr" / f"{syntax}.dcm"
    volume = load_series([path])
    assert volume.projection and volume.voxels.shape == (1, 1955, 1841)
    assert not volume.pixel_spacing_known  # the file's Pixel Spacing is 0\0
    spec = load_model_spec(REPOSITORY, "cxr_lung_seg")
    expected = lung_fields(read_radiograph(path)[0])
    backend = TritonBackend(triton_grpc_url)
    try:
        for labels in (run_model(volume, spec, EmbeddedBackend()),
                       run_model(volume, spec, backend)):
            assert np.array_equal(labels[0], expected)
    finally:
        backend.close()


@pytest.mark.parametrize("shared_memory", [False, True])
def test_cxr_mass_map_heatmap_on_both_backends_equals_the_twin(
    triton_grpc_url: str, tmp_path: Path, shared_memory: bool
) -> None:
    """A heatmap model's probability map on the source grid ([findings, 1, rows, columns]),
    from onnxruntime in-process and from Triton (gRPC, and system shared memory sized for the
    float maps), equal to the independent computation."""
    from tests.support.independent import mass_map, read_radiograph
    from tests.support.radiographs import radiograph

    path = radiograph(tmp_path, "mass", "P-HEATMAP")
    volume = load_series([path])
    spec = load_model_spec(REPOSITORY, "cxr_mass_map")
    expected = mass_map(read_radiograph(path)[0])
    backend = TritonBackend(triton_grpc_url, shared_memory=shared_memory)
    try:
        for maps in (run_heatmap(volume, spec, EmbeddedBackend()),
                     run_heatmap(volume, spec, backend)):
            assert maps.shape == (1, 1, 1955, 1841) and maps.dtype == np.float32
            assert np.abs(maps[0, 0] - expected).max() < 1e-4 and maps.max() > 0.99
    finally:
        backend.close()
