#!/usr/bin/env python3
"""Inference benchmark: per-stage seconds, embedded vs Triton, same run, for each model on its
shared data: ct_body_seg (134-slice CT), mr_head_mask and mr_brain_extraction (the 35-slice head
MR; the latter deepbet's two pretrained TorchScript networks in stages), cxr_lung_seg,
cxr_mass_cls and cxr_mass_map (the chest radiograph), and optionally a MONAI bundle imported for
the run
(`--bundle spleen`: the shared spleen_ct_segmentation configuration with seeded weights,
imported by `ainode models import`; its import time is reported).

Backends: embedded (onnxruntime or TorchScript in-process), Triton gRPC, Triton gRPC + system
shared memory, Triton HTTP; rounds alternate their order. Needs a tritonserver serving
model_repository/ (`make triton-up`; ports TRITON_GRPC_PORT / TRITON_HTTP_PORT); the bundle
gets a private one on free ports, serving the temporary repository it was imported into.
Prints one JSON object: medians per model, stage and backend, Triton's overhead over embedded
inference, and peak RSS.

    .venv/bin/python bench/infer.py [--rounds 3] [--models ct_body_seg,…] [--bundle spleen]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.imaging.volume import Volume, load_series  # noqa: E402
from node.infer.embedded import EmbeddedBackend  # noqa: E402
from node.infer.repository import ModelSpec, load_model_spec  # noqa: E402
from node.infer.runner import StageTimes, run_classifier, run_heatmap, run_model  # noqa: E402
from node.infer.triton import TritonBackend  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
MODEL_DATA = {
    "ct_body_seg": DATA / "ct-abdomen",
    "ct_lesion_unet": DATA / "ct-abdomen",
    "mr_head_mask": DATA / "mr-brain",
    "mr_brain_extraction": DATA / "mr-brain",
    "cxr_lung_seg": DATA / "cxr" / "RG1_JLSN.dcm",
    "cxr_mass_cls": DATA / "cxr" / "RG1_JLSN.dcm",
    "cxr_mass_map": DATA / "cxr" / "RG1_JLSN.dcm",
}


def server_peak_rss_mb(run_dir: Path) -> float | None:
    try:
        pid = (run_dir / "pid").read_text().strip()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def paths_of(data: Path) -> list[Path]:
    return [data] if data.is_file() else sorted(data.glob("*.dcm"))


def run_once(volume: Volume, spec: ModelSpec, backend: Any, times: StageTimes) -> None:
    if spec.is_classifier:
        run_classifier(volume, spec, backend, times)
    elif spec.is_heatmap:
        run_heatmap(volume, spec, backend, times)
    else:
        run_model(volume, spec, backend, times)


def bench_model(spec: ModelSpec, paths: list[Path], backends: dict[str, Any],
                rounds: int) -> dict[str, Any]:
    for backend in backends.values():  # readiness, and one warm-up so sessions are loaded
        backend.check(spec)
        run_once(load_series(paths), spec, backend, StageTimes())
    stages: dict[str, dict[str, list[float]]] = {name: {} for name in backends}
    for round_no in range(rounds):
        order = list(backends) if round_no % 2 == 0 else list(backends)[::-1]
        for name in order:
            started = time.perf_counter()
            volume = load_series(paths)
            times = StageTimes({"load": time.perf_counter() - started})
            run_once(volume, spec, backends[name], times)
            for stage, seconds in times.seconds.items():
                stages[name].setdefault(stage, []).append(seconds)
    medians = {name: {stage: round(statistics.median(v), 4) for stage, v in per.items()}
               for name, per in stages.items()}
    embedded_infer = medians["embedded"]["infer"]
    others = [name for name in backends if name != "embedded"]
    return {
        "model_version": spec.version, "instances": len(paths), "rounds": rounds,
        "seconds_median": medians,
        # a ratio over a sub-millisecond embedded call says nothing: milliseconds added instead
        "triton_overhead_over_embedded_infer": {
            name: round((medians[name]["infer"] - embedded_infer) / embedded_infer, 3)
            if embedded_infer >= 0.01 else None for name in others
        },
        "triton_added_infer_ms": {
            name: round((medians[name]["infer"] - embedded_infer) * 1000, 1) for name in others
        },
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_spleen_bundle(rounds: int) -> dict[str, Any]:
    """Seeded spleen bundle -> `ainode models import` (timed) -> embedded and a private
    tritonserver serving the temporary repository."""
    from tests.support.bundles import spleen_calibration, with_weights

    work = Path(tempfile.mkdtemp(prefix="ainode-bench-bundle-"))
    paths = paths_of(DATA / "ct-abdomen")
    bundle = with_weights("spleen_ct_segmentation", work,
                          calibration=spleen_calibration(load_series(paths).voxels))
    config = work / "node.yaml"
    config.write_text(json.dumps({"inference": {"model_repository": str(work / "repo")}}))
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "ainode"), "models", "import",
                    str(bundle), "--config", str(config)], check=True, capture_output=True)
    import_seconds = round(time.perf_counter() - started, 1)
    spec = load_model_spec(work / "repo", "spleen_ct_segmentation")
    grpc = free_port()
    env = {**os.environ, "TRITON_RUN_DIR": str(work / "triton"),
           "TRITON_MODEL_REPOSITORY": str(work / "repo"), "TRITON_GRPC_PORT": str(grpc),
           "TRITON_HTTP_PORT": str(free_port()), "TRITON_METRICS_PORT": str(free_port())}
    script = str(ROOT / "scripts" / "triton.sh")
    subprocess.run(["bash", script, "up"], env=env, check=True, capture_output=True)
    backends = {"embedded": EmbeddedBackend(), "triton_grpc": TritonBackend(f"127.0.0.1:{grpc}")}
    try:
        result = bench_model(spec, paths, backends, rounds)
        result["tritonserver_peak_rss_mb"] = server_peak_rss_mb(work / "triton")
    finally:
        for backend in backends.values():
            backend.close()
        subprocess.run(["bash", script, "kill"], env=env, check=False, capture_output=True)
    result["import_seconds_wall"] = import_seconds
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--models", default="ct_body_seg,mr_head_mask,mr_brain_extraction,cxr_lung_seg,"
                            "cxr_mass_cls,cxr_mass_map")
    parser.add_argument("--bundle", choices=["spleen"], help="also a bundle imported for the run")
    args = parser.parse_args()
    grpc = f"127.0.0.1:{os.environ.get('TRITON_GRPC_PORT', '8001')}"
    http = f"127.0.0.1:{os.environ.get('TRITON_HTTP_PORT', '8000')}"
    backends: dict[str, Any] = {
        "embedded": EmbeddedBackend(),
        "triton_grpc": TritonBackend(grpc),
        "triton_grpc_shm": TritonBackend(grpc, shared_memory=True),
        "triton_http": TritonBackend(http, protocol="http"),
    }
    results: dict[str, Any] = {}
    for name in [m for m in args.models.split(",") if m]:
        spec = load_model_spec(ROOT / "model_repository", name)
        results[name] = bench_model(spec, paths_of(MODEL_DATA[name]), backends, args.rounds)
    for backend in backends.values():
        backend.close()
    if args.bundle == "spleen":
        results["bundle:spleen_ct_segmentation"] = bench_spleen_bundle(max(1, args.rounds // 3))
    print(json.dumps({
        "models": results,
        "bench_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                           / 1024, 1),
        "tritonserver_peak_rss_mb": server_peak_rss_mb(ROOT / "var" / "triton"),
    }, indent=2))


if __name__ == "__main__":
    main()
