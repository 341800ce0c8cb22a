#!/usr/bin/env python3
"""Ingest benchmark: dcmtk storescu -> dcmtk storescp vs -> ainode serve, in the same run.

Sends the 134-slice CT, then 402 instances (3 copies with new UIDs), with TCP_NODELAY=1 for
every dcmtk process, alternating peers each round. ainode runs with its shipped durability
(fsync before every acknowledgement). Prints one JSON object: medians per peer and workload,
the ratio ainode/storescp, and the node's peak RSS.

    .venv/bin/python bench/ingest.py [--rounds 5] [--data ../shared/data/ct-abdomen]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from ports import free_port, wait_port  # bench/ports.py
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parent.parent
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"


def make_copies(source: Path, target: Path, copies: int) -> list[Path]:
    """The source series plus ``copies`` re-identified copies (new study/series/SOP UIDs)."""
    files = sorted(source.glob("*.dcm"))
    out: list[Path] = []
    for copy in range(copies + 1):
        folder = target / f"copy{copy}"
        folder.mkdir(parents=True)
        if copy == 0:
            for f in files:
                shutil.copy(f, folder / f.name)
                out.append(folder / f.name)
            continue
        study, series = generate_uid(), generate_uid()
        for f in files:
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(folder / f.name, enforce_file_format=True)
            out.append(folder / f.name)
    return out


def send(port: int, ae: str, files: list[Path], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [STORESCU, "-aet", "STORESCU", "-aec", ae, "127.0.0.1", str(port), *map(str, files)],
        env=env, check=True, capture_output=True,
    )
    return time.perf_counter() - start


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_storescp(files: list[Path], work: Path, env: dict[str, str]) -> float:
    port, out = free_port(), work / "storescp-out"
    out.mkdir()
    proc = subprocess.Popen([STORESCP, "-aet", "STORESCP", "-od", str(out), str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        return send(port, "STORESCP", files, env)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(out)


def run_ainode(files: list[Path], work: Path, env: dict[str, str],
               overrides: dict[str, str]) -> tuple[float, float]:
    port, data = free_port(), work / "ainode-var"
    config = work / "node.yaml"
    config.write_text(json.dumps({
        "node": {"ae_title": "AINODE", "dicom_port": port, "data_dir": str(data),
                 "bind": "127.0.0.1", "min_free_disk_mb": 64},
        "peers": [{"name": "MODALITY", "ae_title": "STORESCU", "host": "127.0.0.1",
                   "port": 11113}],
        "series": {"quiet_seconds": 30},
    }))
    ainode = str(Path(sys.executable).parent / "ainode")
    proc = subprocess.Popen([ainode, "serve", "--config", str(config), "--log-level", "warning"],
                            env={**env, **overrides}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        elapsed = send(port, "AINODE", files, env)
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(data)
    return elapsed, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/ct-abdomen")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="also run ainode with these AINODE__* overrides, e.g. "
             "nofsync:AINODE__NODE__FSYNC=false",
    )
    args = parser.parse_args()
    variants: dict[str, dict[str, str]] = {"ainode": {}}
    for spec in args.variant:
        name, _, assignments = spec.partition(":")
        variants[f"ainode_{name}"] = dict(a.split("=", 1) for a in assignments.split(",") if a)
    env = {**os.environ, "TCP_NODELAY": "1"}
    with tempfile.TemporaryDirectory(prefix="ainode-bench-", dir=ROOT.parent) as tmp:
        work = Path(tmp)
        all_files = make_copies(args.data, work / "data", copies=3)
        workloads = {"ct134": all_files[:134], "ct402": all_files[134:]}
        size_mb = {k: sum(f.stat().st_size for f in v) / 1e6 for k, v in workloads.items()}
        peers = ["storescp", *variants]
        times: dict[str, dict[str, list[float]]] = {k: {p: [] for p in peers} for k in workloads}
        rss: dict[str, list[float]] = {v: [] for v in variants}
        for round_no in range(args.rounds):
            for name, files in workloads.items():
                order = peers if round_no % 2 == 0 else peers[::-1]
                for peer in order:
                    if peer == "storescp":
                        times[name][peer].append(run_storescp(files, work, env))
                    else:
                        elapsed, peak = run_ainode(files, work, env, variants[peer])
                        times[name][peer].append(elapsed)
                        rss[peer].append(peak)
        result: dict[str, object] = {"rounds": args.rounds, "tcp_nodelay": True,
                                     "ainode_fsync": True, "variants": variants, "workloads": {}}
        for name, files in workloads.items():
            entry: dict[str, float] = {"instances": len(files), "mb": round(size_mb[name], 1)}
            for peer in peers:
                median = statistics.median(times[name][peer])
                entry[f"{peer}_seconds_median"] = round(median, 3)
                entry[f"{peer}_instances_per_s"] = round(len(files) / median, 1)
                entry[f"{peer}_mb_per_s"] = round(size_mb[name] / median, 1)
            for variant in variants:
                entry[f"ratio_{variant}_over_storescp"] = round(
                    entry[f"{variant}_instances_per_s"] / entry["storescp_instances_per_s"], 3)
            result["workloads"][name] = entry  # type: ignore[index]
        for variant in variants:
            result[f"{variant}_peak_rss_mb"] = round(max(rss[variant]), 1)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
