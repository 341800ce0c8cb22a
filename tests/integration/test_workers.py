"""Jobs run in worker processes apart from the node (``inference.isolation: process``): a
worker process that is killed mid-job or runs a hanging model is replaced, its job retried and
ended with the reason, while the node keeps answering C-STORE; the node process itself never
loads torch, MONAI, onnxruntime or a model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from node.runtime.process import WORKER_ALLOCATOR_ENV
from tests.support.environment import CT_DIR, ECHOSCU, ROOT, STORESCU, ct_files, require, wait_for
from tests.support.node import child_processes, role_processes, storescu

pytestmark = pytest.mark.integration
CT_BODY = {"name": "ct-body", "match": {"modality": "CT"}, "model": "ct_body_seg",
           "outputs": []}
MR_FILES = sorted((CT_DIR.parent / "mr-brain").glob("*.dcm"))
IN_MODEL_LIBRARIES = ("libtorch", "onnxruntime", "libc10")






def worker_processes(node_pid: int) -> list[int]:
    """The worker role's worker processes (multiprocessing spawn children)."""
    worker_role = role_processes(node_pid)["worker"]
    return [pid for pid, command in child_processes(worker_role) if b"spawn_main" in command]


def no_model_anywhere_but_workers(node_pid: int) -> bool:
    """Neither the supervisor nor its receiver, worker and sender processes load a model."""
    pids = [node_pid, *role_processes(node_pid).values()]
    return all(loaded_model_libraries(pid) == set() for pid in pids)


def loaded_model_libraries(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {name for name in IN_MODEL_LIBRARIES if name in maps}


def hanging_model(repository: Path) -> None:
    """A real ONNX model that never finishes: a Loop of 10^15 iterations before its output
    (the input times zero, as labels)."""
    trip = helper.make_tensor("trip", TensorProto.INT64, [], [10 ** 15])
    keep_going = helper.make_tensor("keep_going", TensorProto.BOOL, [], [True])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["count_in", "one"], ["count_out"])],
        "spin",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("count_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("count_out", TensorProto.FLOAT, [])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    nodes = [
        helper.make_node("Constant", [], ["trip"], value=trip),
        helper.make_node("Constant", [], ["keep_going"], value=keep_going),
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor(
            "z", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("Loop", ["trip", "keep_going", "zero"], ["count"], body=body),
        helper.make_node("Mul", ["image", "count"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "scaled"], ["nothing"]),
        helper.make_node("Cast", ["nothing"], ["labels"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes, "hang",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, "d", "h", "w"])],
        [helper.make_tensor_value_info("labels", TensorProto.UINT8, [1, 1, "d", "h", "w"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (repository / "hang" / "1").mkdir(parents=True)
    onnx.save(model, str(repository / "hang" / "1" / "model.onnx"))
    (repository / "hang" / "config.pbtxt").write_text(
        'name: "hang"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        'input [ { name: "image" data_type: TYPE_FP32 dims: [ 1, 1, -1, -1, -1 ] } ]\n'
        'output [ { name: "labels" data_type: TYPE_UINT8 dims: [ 1, 1, -1, -1, -1 ] } ]\n'
        'parameters: { key: "ainode_output_kind" value: { string_value: "labels" } }\n'
        'parameters: { key: "ainode_labels" value: { string_value: "[\\"background\\"]" } }\n')


def test_a_worker_process_killed_mid_job_is_replaced_and_the_job_finishes(
    node_factory: Any,
) -> None:
    """SIGKILL of the worker process while it runs the job (as the kernel's OOM killer would):
    the node stays up, a new worker process takes over, the job is retried (the attempt
    counted, the cause recorded) and finishes; the node process holds no model library."""
    require(STORESCU)
    node = node_factory(series={"quiet_seconds": 1},
                        inference={"model_repository": str(ROOT / "model_repository"),
                                   "job_retry_s": 0.5},
                        pipelines=[CT_BODY]).start()
    assert storescu(node, *ct_files()).returncode == 0
    assert node.proc is not None
    assert wait_for(lambda: node.query("SELECT state FROM jobs") == [("running",)], 120, 0.05), (
        node.query("SELECT * FROM jobs"), node.log()[-2000:])
    (worker,) = worker_processes(node.proc.pid)
    assert loaded_model_libraries(worker), "the worker process runs the model"
    environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    assert {f"{k}={v}".encode() for k, v in WORKER_ALLOCATOR_ENV.items()} <= set(environ)
    os.kill(worker, signal.SIGKILL)
    assert wait_for(lambda: node.query("SELECT state FROM jobs") == [("done",)], 180, 0.2), (
        node.query("SELECT * FROM jobs"), node.log()[-3000:])
    assert node.query("SELECT attempts FROM jobs") == [(2,)]
    assert "worker process died during job 1 (killed by SIGKILL)" in node.log()
    assert node.alive and worker not in worker_processes(node.proc.pid)
    assert no_model_anywhere_but_workers(node.proc.pid)


def test_a_hanging_model_is_stopped_at_the_job_timeout_and_the_node_keeps_receiving(
    node_factory: Any, tmp_path: Path
) -> None:
    """A model that never returns: at ``inference.job_timeout_s`` its worker process is
    stopped and replaced; after ``job_attempts`` the job fails with that reason. Meanwhile the
    node answers C-STORE (the head MR arrives while the CT's job hangs), and the other pipeline
    of the same CT runs on the fresh worker process."""
    require(STORESCU)
    repository = tmp_path / "repository"
    repository.mkdir()
    shutil.copytree(ROOT / "model_repository" / "ct_body_seg", repository / "ct_body_seg")
    hanging_model(repository)
    node = node_factory(
        series={"quiet_seconds": 1},
        inference={"model_repository": str(repository), "job_timeout_s": 8,
                   "job_attempts": 2, "job_retry_s": 0.5},
        pipelines=[{"name": "hang", "match": {"modality": "CT"}, "model": "hang",
                    "outputs": [], "priority": 10}, CT_BODY]).start()
    assert storescu(node, *ct_files()).returncode == 0
    assert wait_for(lambda: ("running",) in node.query(
        "SELECT state FROM jobs WHERE pipeline='hang'"), 120, 0.05), node.log()[-2000:]
    sent = storescu(node, *MR_FILES)  # while the model hangs
    assert sent.returncode == 0 and sent.stderr.count("Received Store Response (Success)") == len(
        MR_FILES), sent.stderr[-2000:]
    assert wait_for(lambda: node.query(
        "SELECT pipeline, state FROM jobs ORDER BY pipeline") == [("ct-body", "done"),
                                                                   ("hang", "failed")], 240, 0.2), (
        node.query("SELECT pipeline, state, error FROM jobs"), node.log()[-3000:])
    ((error, attempts),) = node.query("SELECT error, attempts FROM jobs WHERE pipeline='hang'")
    assert attempts == 2 and "ran past inference.job_timeout_s (8 s)" in error, error
    assert node.query("SELECT COUNT(*) FROM instances WHERE series_uid IN (SELECT series_uid "
                      "FROM series WHERE modality='MR')") == [(len(MR_FILES),)]
    assert node.proc is not None and no_model_anywhere_but_workers(node.proc.pid)
    ((summary,),) = node.query("SELECT result FROM jobs WHERE pipeline='ct-body'")
    assert np.load(Path(json.loads(summary)["result_dir"]) / "labels.npy").any()


def test_a_role_process_that_dies_is_restarted_and_its_job_resumed(node_factory: Any) -> None:
    """``ainode serve`` supervises its roles: SIGKILL of the whole worker role mid-job (its
    worker processes die with it) and of the sender: both are started again, the job runs
    again on the new worker (the interrupted attempt counted) and the receiver, untouched,
    kept its port throughout."""
    require(STORESCU)
    node = node_factory(series={"quiet_seconds": 1},
                        inference={"model_repository": str(ROOT / "model_repository"),
                                   "job_retry_s": 0.5},
                        pipelines=[CT_BODY]).start()
    assert node.proc is not None
    before = role_processes(node.proc.pid)
    assert set(before) == {"receiver", "worker", "sender", "web"}, before
    assert storescu(node, *ct_files()).returncode == 0
    assert wait_for(lambda: node.query("SELECT state FROM jobs") == [("running",)], 120, 0.05), (
        node.log()[-2000:])
    os.kill(before["worker"], signal.SIGKILL)
    os.kill(before["sender"], signal.SIGKILL)
    assert wait_for(lambda: node.query("SELECT state FROM jobs") == [("done",)], 240, 0.2), (
        node.query("SELECT * FROM jobs"), node.log()[-3000:])
    after = role_processes(node.proc.pid)
    assert after["receiver"] == before["receiver"] and after["web"] == before["web"]
    assert after["worker"] != before["worker"] and after["sender"] != before["sender"]
    assert node.query("SELECT attempts FROM jobs") == [(2,)]
    assert "worker process ended (killed by SIGKILL)" in node.log()
    echo = subprocess.run([ECHOSCU, "-aec", node.ae_title, "127.0.0.1", str(node.port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr
