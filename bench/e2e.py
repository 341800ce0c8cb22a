#!/usr/bin/env python3
"""End-to-end benchmark: last C-STORE response -> last result stored in Orthanc, by stage.

dcmtk storescu sends the 134-slice CT to `ainode serve` (embedded inference, pipeline ct-body
with SEG + SR + SC to a real Orthanc). Stages: quiet period (series completion), load,
preprocess, infer, postprocess, encode, send (job done -> last object acknowledged by Orthanc).
Prints medians over the rounds as JSON, and the total without the quiet period and inference.

    .venv/bin/python bench/e2e.py [--rounds 3] [--quiet-seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from ports import free_port, wait_port  # bench/ports.py

ROOT = Path(__file__).resolve().parent.parent
CT = ROOT.parent / "shared" / "data" / "ct-abdomen"
ENV = {**os.environ, "TCP_NODELAY": "1"}
SEGMENTS = yaml.safe_load((ROOT / "config" / "node.yaml").read_text())["pipelines"][0]["segments"]


def one_round(work: Path, quiet: float) -> dict[str, float]:
    node_port, pacs_port, http_port = free_port(), free_port(), free_port()
    (work / "orthanc.json").write_text(json.dumps({
        "StorageDirectory": str(work / "orthanc"), "IndexDirectory": str(work / "orthanc"),
        "HttpPort": http_port, "DicomPort": pacs_port, "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True}))
    config = {
        "node": {"dicom_port": node_port, "bind": "127.0.0.1", "data_dir": str(work / "var"),
                 "min_free_disk_mb": 64},
        "peers": [{"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1",
                   "port": pacs_port},
                  {"name": "MODALITY", "ae_title": "STORESCU", "host": "127.0.0.1",
                   "port": 11113}],
        "inference": {"model_repository": str(ROOT / "model_repository")},
        "egress": {"interval_s": 0.2},
        "series": {"quiet_seconds": quiet, "sweep_interval_s": 0.1},
        "pipelines": [{"name": "ct-body", "match": {"modality": "CT"}, "model": "ct_body_seg",
                       "outputs": ["seg", "sr", "sc"], "destinations": ["PACS"],
                       "segments": SEGMENTS}],
    }
    (work / "node.yaml").write_text(yaml.safe_dump(config))
    with open(work / "orthanc.log", "wb") as log:
        pacs = subprocess.Popen(["/usr/sbin/Orthanc", str(work / "orthanc.json")], stdout=log,
                                stderr=subprocess.STDOUT, env=ENV)
    node = subprocess.Popen([str(Path(sys.executable).parent / "ainode"), "serve", "--config",
                             str(work / "node.yaml"), "--log-level", "warning"], env=ENV)
    try:
        wait_port(pacs_port, 30)
        wait_port(node_port, 30)
        subprocess.run(["/usr/bin/storescu", "-aet", "STORESCU", "-aec", "AINODE", "127.0.0.1",
                        str(node_port), *map(str, sorted(CT.glob("*.dcm")))], env=ENV,
                       check=True, capture_output=True)
        last_response = time.time()
        db = work / "var" / "jobs.sqlite3"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with sqlite3.connect(db) as conn:
                sent = conn.execute("SELECT COUNT(*), MAX(updated_at) FROM outbox "
                                    "WHERE state='sent'").fetchone() if conn.execute(
                    "SELECT name FROM sqlite_master WHERE name='outbox'").fetchone() else (0, 0)
            if sent[0] == 3:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("results did not arrive")
        with sqlite3.connect(db) as conn:
            (completed,) = conn.execute(
                "SELECT completed_at FROM series").fetchone()
            result, done_at = conn.execute("SELECT result, updated_at FROM jobs").fetchone()
        seconds: dict[str, Any] = json.loads(result)["seconds"]
        stages = {"quiet_period": completed - last_response,
                  **{k: float(v) for k, v in seconds.items()},
                  "send": sent[1] - done_at,
                  "total": sent[1] - last_response}
        stages["total_without_quiet_and_infer"] = (stages["total"] - stages["quiet_period"]
                                                   - stages["infer"])
        return stages
    finally:
        node.terminate()
        node.wait(timeout=60)
        pacs.terminate()
        pacs.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quiet-seconds", type=float, default=2.0)
    args = parser.parse_args()
    rounds = []
    for _ in range(args.rounds):
        work = Path(tempfile.mkdtemp(prefix="ainode-e2e-", dir=ROOT.parent))
        try:
            rounds.append(one_round(work, args.quiet_seconds))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    medians = {k: round(statistics.median(r[k] for r in rounds), 3) for k in rounds[0]}
    print(json.dumps({"instances": 134, "rounds": args.rounds, "model": "ct_body_seg",
                      "backend": "embedded", "outputs": ["seg", "sr", "sc"],
                      "seconds_median": medians,
                      "target_total_without_quiet_and_infer_s": 3.0}, indent=2))


if __name__ == "__main__":
    main()
