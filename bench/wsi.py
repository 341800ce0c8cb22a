#!/usr/bin/env python3
"""Whole-slide benchmark: the job time and peak memory of wsi_stain_density on a synthetic
50,176 x 50,176 slide (JPEG tiles, TILED_FULL, a 1/16 level; built here from highdicom's
test WSI header, tests/support/slides.py), against the floor in the same run: decoding the
base level's tissue frames and nothing else (highdicom, one frame at a time).

Each round runs in a fresh process (so peak RSS is the job's own, imports included): the
node's slide job (JobExecutor, embedded backend, ANN + SEG + SR written) and the decode-only
floor. Prints one JSON object: medians of the rounds, per-stage seconds, peak RSS (MB), the
ratio job / floor.

    .venv/bin/python bench/wsi.py [--rounds 3] [--size 50176]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEMPLATE = ROOT.parent / "shared" / "data" / "reference" / "highdicom_test_files" / "sm_image.dcm"
MAX_RSS_MB = 2048


def run_job(folder: Path) -> dict[str, Any]:
    from node.domain import Job, SeriesKey
    from node.infer.embedded import EmbeddedBackend
    from node.jobs.execute import JobExecutor
    from node.settings import Settings

    settings = Settings.model_validate({
        "node": {"data_dir": str(folder / "var")},
        "inference": {"model_repository": str(ROOT / "model_repository")},
        "pipelines": [{"name": "slide", "model": "wsi_stain_density",
                       "outputs": ["ann", "seg", "sr"], "match": {"modality": "SM"}}]})
    paths = sorted(str(p) for p in folder.glob("level-*.dcm"))
    started = time.perf_counter()
    result = JobExecutor(settings, EmbeddedBackend()).execute(
        Job(1, SeriesKey("1.2.3.4", 1), "slide", "wsi_stain_density", 1), paths)
    seconds = time.perf_counter() - started
    return {"job_s": round(seconds, 3), "stages_s": result.summary["seconds"],
            "tiles_classified": result.summary["slide"]["tiles_classified"],
            "tiles_total": result.summary["slide"]["tiles_total"],
            "outputs": sorted(result.summary["outputs"]),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def run_floor(folder: Path) -> dict[str, Any]:
    """Decode each base-level frame that holds tissue, once (what any reader must do)."""
    import highdicom as hd
    import numpy as np

    from tests.support.slides import in_tissue

    image = hd.imread(str(folder / "level-1.dcm"), lazy_frame_retrieval=True)
    side, tile = int(image.TotalPixelMatrixRows), int(image.Rows)
    per_side = -(-side // tile)
    centres = np.arange(per_side) * tile + tile / 2
    rows, columns = np.meshgrid(centres, centres, indexing="ij")
    frames = np.flatnonzero(in_tissue(rows, columns, side).ravel()) + 1
    started = time.perf_counter()
    for number in frames:
        image.get_frame(int(number), dtype=np.uint8, apply_icc_profile=False)
    return {"floor_s": round(time.perf_counter() - started, 3), "frames": len(frames),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def in_child(kind: str, folder: Path) -> dict[str, Any]:
    output = subprocess.run([sys.executable, __file__, "--child", kind, str(folder)],
                            check=True, capture_output=True, text=True, timeout=1800).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=50_176)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, folder = args.child
        print(json.dumps((run_job if kind == "job" else run_floor)(Path(folder))))
        return
    from tests.support.slides import large_slide

    with tempfile.TemporaryDirectory(prefix="ainode-wsi-") as work:
        folder = Path(work)
        started = time.perf_counter()
        slide = large_slide(folder, TEMPLATE, size=args.size)
        built_s = time.perf_counter() - started
        size_mb = sum(f.stat().st_size for f in slide.files) / 1e6
        jobs, floors = [], []
        for _ in range(args.rounds):
            jobs.append(in_child("job", folder))
            floors.append(in_child("floor", folder))
    median_job = statistics.median(j["job_s"] for j in jobs)
    median_floor = statistics.median(f["floor_s"] for f in floors)
    stages = {stage: round(statistics.median(j["stages_s"].get(stage, 0.0) for j in jobs), 3)
              for stage in jobs[0]["stages_s"]}
    peak = max(j["peak_rss_mb"] for j in jobs)
    print(json.dumps({
        "benchmark": "wsi", "rounds": args.rounds,
        "slide": {"pixels": [args.size, args.size], "files_mb": round(size_mb, 1),
                  "built_s": round(built_s, 2)},
        "tiles_classified": jobs[0]["tiles_classified"], "tiles_total": jobs[0]["tiles_total"],
        "outputs": jobs[0]["outputs"],
        "job_s_median": median_job, "stages_s_median": stages,
        "floor_decode_tissue_frames_s_median": median_floor,
        "tissue_frames": floors[0]["frames"],
        "job_over_floor": round(median_job / median_floor, 2) if median_floor else None,
        "peak_rss_mb_max": peak, "peak_rss_below_2gb": peak < MAX_RSS_MB,
    }, indent=1))


if __name__ == "__main__":
    main()
