#!/usr/bin/env python3
"""Inference benchmark: per-stage seconds for the 134-slice CT, embedded vs Triton, same run.

Backends: embedded (onnxruntime in-process), Triton gRPC, Triton gRPC + system shared memory,
Triton HTTP; rounds alternate their order. Needs a tritonserver serving model_repository/
(`make triton-up`; ports TRITON_GRPC_PORT / TRITON_HTTP_PORT). Prints one JSON object: medians
per stage and backend, Triton's overhead over embedded inference, and peak RSS (this process,
which holds the embedded sessions, and the tritonserver process).

    .venv/bin/python bench/infer.py [--rounds 3] [--model ct_body_seg]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

from node.imaging.volume import load_series
from node.infer.embedded import EmbeddedBackend
from node.infer.repository import load_model_spec
from node.infer.runner import StageTimes, run_model
from node.infer.triton import TritonBackend

ROOT = Path(__file__).resolve().parent.parent


def server_peak_rss_mb() -> float | None:
    pid_file = ROOT / "var" / "triton" / "pid"
    try:
        pid = pid_file.read_text().strip()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="ct_body_seg")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/ct-abdomen")
    args = parser.parse_args()
    grpc = f"127.0.0.1:{os.environ.get('TRITON_GRPC_PORT', '8001')}"
    http = f"127.0.0.1:{os.environ.get('TRITON_HTTP_PORT', '8000')}"
    backends: dict[str, Any] = {
        "embedded": EmbeddedBackend(),
        "triton_grpc": TritonBackend(grpc),
        "triton_grpc_shm": TritonBackend(grpc, shared_memory=True),
        "triton_http": TritonBackend(http, protocol="http"),
    }
    spec = load_model_spec(ROOT / "model_repository", args.model)
    paths = sorted(args.data.glob("*.dcm"))
    for backend in backends.values():  # readiness, and one warm-up so sessions are loaded
        backend.check(spec)
        run_model(load_series(paths[:8]), spec, backend)
    stages: dict[str, dict[str, list[float]]] = {name: {} for name in backends}
    for round_no in range(args.rounds):
        order = list(backends) if round_no % 2 == 0 else list(backends)[::-1]
        for name in order:
            started = time.perf_counter()
            volume = load_series(paths)
            times = StageTimes({"load": time.perf_counter() - started})
            run_model(volume, spec, backends[name], times)
            for stage, seconds in times.seconds.items():
                stages[name].setdefault(stage, []).append(seconds)
    medians = {name: {stage: round(statistics.median(v), 3) for stage, v in per.items()}
               for name, per in stages.items()}
    embedded_infer = medians["embedded"]["infer"]
    result: dict[str, Any] = {
        "model": spec.name, "model_version": spec.version, "instances": len(paths),
        "rounds": args.rounds, "seconds_median": medians,
        "triton_overhead_over_embedded_infer": {
            name: round((medians[name]["infer"] - embedded_infer) / embedded_infer, 3)
            for name in backends if name != "embedded"
        },
        "bench_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                           / 1024, 1),
        "tritonserver_peak_rss_mb": server_peak_rss_mb(),
    }
    for backend in backends.values():
        backend.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
