#!/usr/bin/env python3
"""Load benchmark: several senders push many CT studies at once; throughput and latency to
results in a real Orthanc, on the SQLite and on the PostgreSQL job store in the same run.

``--senders`` dcmtk storescu processes each send ``--studies / --senders`` copies of the
134-slice CT (new study/series/SOP UIDs, TCP_NODELAY=1) to `ainode serve` (ct_body_seg:
SEG + SR + SC to Orthanc; embedded inference on ``--workers`` worker processes). PostgreSQL is
a throwaway cluster (initdb/pg_ctl, as in the tests). Prints JSON per store: studies/hour (first
instance sent -> last result acknowledged by Orthanc), p50/p95 seconds from a study's last
instance received to its last result in Orthanc, instances lost (sent with success but not
recorded, or recorded but not in a series that produced results: must be 0), duplicate
results (more than one SEG, SR or SC per study in Orthanc: must be 0), peak RSS per process;
and the ratio PostgreSQL/SQLite. With ``--rounds N`` each store runs N times (alternating
which goes first) and the figures are medians, the losses and duplicates the worst round's.

    .venv/bin/python bench/load.py [--studies 20] [--senders 4] [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from ingest import make_copies, peak_rss_mb, process_tree  # bench/ingest.py
from ports import free_port, serving  # bench/ports.py

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CT = ROOT.parent / "shared" / "data" / "ct-abdomen"
ENV = {**os.environ, "TCP_NODELAY": "1"}
SHIPPED = {p["name"]: p for p in yaml.safe_load((ROOT / "config" / "node.yaml").read_text())[
    "pipelines"]}
RESULT_KINDS = 3  # SEG, SR, SC per study
TARGET_STUDIES_PER_HOUR = 900  # issue 29, with 0 lost and 0 duplicates


def _query(store_url: str | None, db_file: Path, sql: str) -> list[tuple[Any, ...]]:
    from node.store.database import open_database
    from node.store.jobs import JobStore

    store = JobStore(open_database(store_url, db_file))
    try:
        return store.query(sql)
    finally:
        store.close()


@contextlib.contextmanager
def orthanc(work: Path) -> Iterator[tuple[int, int]]:
    pacs_port, http_port = free_port(), free_port()
    (work / "orthanc.json").write_text(json.dumps({
        "StorageDirectory": str(work / "orthanc"), "IndexDirectory": str(work / "orthanc"),
        "HttpPort": http_port, "DicomPort": pacs_port, "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True}))
    with open(work / "orthanc.log", "wb") as log, serving(
            ["/usr/sbin/Orthanc", str(work / "orthanc.json")], [pacs_port, http_port], ENV, log,
            timeout_s=30, stop_timeout_s=30):
        yield pacs_port, http_port


def results_per_study(http_port: int) -> dict[str, dict[str, int]]:
    """Orthanc's result series per study: {study UID: {modality: count}}."""
    def get(path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{path}", timeout=60) as r:
            return json.loads(r.read())

    found: dict[str, dict[str, int]] = {}
    for series_id in get("/series"):
        series = get(f"/series/{series_id}")
        study = get(f"/studies/{series['ParentStudy']}")["MainDicomTags"]["StudyInstanceUID"]
        modality = series["MainDicomTags"].get("Modality", "?")
        found.setdefault(study, {}).setdefault(modality, 0)
        found[study][modality] += 1
    return found


def one_run(work: Path, batches: list[list[Path]], studies: int, workers: int,
            store_url: str | None) -> dict[str, Any]:
    data_dir = work / "var"
    with orthanc(work) as (pacs_port, http_port):
        node_port = free_port()
        config = {
            "node": {"dicom_port": node_port, "bind": "127.0.0.1", "data_dir": str(data_dir),
                     "min_free_disk_mb": 64},
            "peers": [{"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1",
                       "port": pacs_port},
                      {"name": "MODALITY", "ae_title": "STORESCU", "host": "127.0.0.1",
                       "port": 11113}],
            "inference": {"model_repository": str(ROOT / "model_repository"),
                          "workers": workers},
            "egress": {"interval_s": 0.2},
            "series": {"quiet_seconds": 2, "sweep_interval_s": 0.2},
            "pipelines": [{**SHIPPED["ct-body"], "outputs": ["seg", "sr", "sc"],
                           "destinations": ["PACS"]}],
        }
        if store_url:
            config["store"] = {"url": store_url}
        (work / "node.yaml").write_text(yaml.safe_dump(config))
        with serving([str(Path(sys.executable).parent / "ainode"), "serve", "--config",
                      str(work / "node.yaml"), "--log-level", "warning"], [node_port], ENV,
                     log=None) as node:
            started = time.time()
            senders = [subprocess.Popen(
                ["/usr/bin/storescu", "-v", "-aet", "STORESCU", "-aec", "AINODE", "127.0.0.1",
                 str(node_port), *map(str, files)], env=ENV, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True) for files in batches]
            acknowledged = 0
            for sender in senders:
                _, log = sender.communicate()
                acknowledged += log.count("Received Store Response (Success)")
            db_file = data_dir / "jobs.sqlite3"
            deadline = time.monotonic() + 3600
            while time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    ((sent,),) = _query(store_url, db_file,
                                        "SELECT COUNT(*) FROM outbox WHERE state='sent'")
                    ((ended,),) = _query(store_url, db_file,
                                         "SELECT COUNT(*) FROM jobs WHERE state IN"
                                         " ('done', 'failed')")
                    if sent >= studies * RESULT_KINDS or (ended >= studies and sent == ended * 3):
                        break
                time.sleep(0.5)
            rss = {name: round(peak_rss_mb(pid), 1)
                   for name, pid in process_tree(node.pid).items()}
            latencies = [row[0] for row in _query(
                store_url, db_file,
                "SELECT MAX(o.updated_at) - s.last_at FROM series s JOIN jobs j ON"
                " j.series_uid = s.series_uid AND j.revision = s.revision JOIN outbox o ON"
                " o.job_id = j.id WHERE o.state = 'sent' GROUP BY s.series_uid, s.revision,"
                " s.last_at")]
            ((last_result,),) = _query(store_url, db_file,
                                       "SELECT MAX(updated_at) FROM outbox WHERE state='sent'")
            ((recorded,),) = _query(store_url, db_file, "SELECT COUNT(*) FROM instances")
            ((in_results,),) = _query(
                store_url, db_file,
                "SELECT COALESCE(SUM(s.instance_count), 0) FROM series s WHERE EXISTS (SELECT 1"
                " FROM jobs j WHERE j.series_uid = s.series_uid AND j.state = 'done')")
            failed = _query(store_url, db_file, "SELECT error FROM jobs WHERE state='failed'")
        per_study = results_per_study(http_port)
    duplicates = sum(max(0, count - 1) for kinds in per_study.values()
                     for count in kinds.values())
    elapsed = float(last_result) - started
    latencies.sort()
    return {
        "studies": studies,
        "instances_acknowledged": acknowledged,
        "instances_lost": acknowledged - min(int(recorded), int(in_results)),
        "studies_with_results_in_orthanc": len(per_study),
        "duplicate_results": duplicates,
        "failed_jobs": [row[0] for row in failed],
        "studies_per_hour": round(studies / elapsed * 3600, 1),
        "seconds_first_sent_to_last_result": round(elapsed, 1),
        "latency_p50_s": round(statistics.median(latencies), 1),
        "latency_p95_s": round(latencies[min(len(latencies) - 1,
                                             int(0.95 * len(latencies)))], 1),
        "peak_rss_mb": rss,
    }


def summarised(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds of one store; losses, duplicates and failures are the worst
    round's (each must be 0 in every round); every round's figures are kept."""
    return {
        "rounds": len(runs),
        "studies": runs[0]["studies"],
        "studies_per_hour_median": round(statistics.median(
            r["studies_per_hour"] for r in runs), 1),
        "latency_p50_s_median": round(statistics.median(r["latency_p50_s"] for r in runs), 1),
        "latency_p95_s_median": round(statistics.median(r["latency_p95_s"] for r in runs), 1),
        "instances_lost_max": max(r["instances_lost"] for r in runs),
        "duplicate_results_max": max(r["duplicate_results"] for r in runs),
        "failed_jobs": [error for r in runs for error in r["failed_jobs"]],
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs per store, alternating the stores' order")
    args = parser.parse_args()
    result: dict[str, Any] = {"senders": args.senders, "workers": args.workers,
                              "model": "ct_body_seg", "results": "SEG+SR+SC",
                              "target_studies_per_hour": TARGET_STUDIES_PER_HOUR}
    stores = args.stores.split(",")
    runs: dict[str, list[dict[str, Any]]] = {store: [] for store in stores}
    with tempfile.TemporaryDirectory(prefix="ainode-load-", dir=ROOT.parent) as tmp:
        work = Path(tmp)
        files = make_copies(CT, work / "data", copies=args.studies)[134:]  # new UIDs only
        studies = [files[i:i + 134] for i in range(0, len(files), 134)]
        batches = [[f for study in studies[i::args.senders] for f in study]
                   for i in range(args.senders)]
        for round_number in range(args.rounds):
            order = stores if round_number % 2 == 0 else stores[::-1]
            for store in order:
                run_dir = work / f"{store}-{round_number}"
                run_dir.mkdir()
                if store == "postgresql":
                    from tests.support.postgres import throwaway_cluster

                    with throwaway_cluster(free_port()) as cluster:
                        runs[store].append(one_run(run_dir, batches, args.studies,
                                                   args.workers, cluster.new_database()))
                else:
                    runs[store].append(one_run(run_dir, batches, args.studies, args.workers,
                                               None))
    for store in stores:
        result[store] = summarised(runs[store])
        result[store]["within_target"] = (
            result[store]["studies_per_hour_median"] >= TARGET_STUDIES_PER_HOUR
            and result[store]["instances_lost_max"] == 0
            and result[store]["duplicate_results_max"] == 0)
    if "sqlite" in result and "postgresql" in result:
        result["ratio_postgresql_over_sqlite_studies_per_hour"] = round(
            result["postgresql"]["studies_per_hour_median"]
            / result["sqlite"]["studies_per_hour_median"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
