#!/usr/bin/env python3
"""Ingest benchmark: dcmtk storescu -> dcmtk storescp vs -> ainode serve, in the same run.

Sends the 134-slice CT, then 402 instances (3 copies with new UIDs), with TCP_NODELAY=1 for
every dcmtk process, alternating peers each round. ainode runs with its shipped durability
(fsync before every acknowledgement). Prints one JSON object: medians per peer and workload,
the ratio ainode/storescp, and the peak RSS of each ainode process (supervisor and roles).
Each round also times the node's own durable write of each CT slice (``durable_write_ms``:
temporary, fdatasync, rename, directory fsync) on the same file system; with one sender this
gives the ceiling of any receiver that keeps the fsync over bare pynetdicom.

``--senders N``: N storescu processes at once, each with its own 402 instances (new UIDs),
against ``storescp --fork`` and the node (add ``--variant
rp4:AINODE__NODE__RECEIVER_PROCESSES=4`` for receivers sharing the port). ``--busy-workers
N``: the node also runs ct_lesion_unet on N worker processes throughout the measurement
(series sent beforehand), against the same node idle: the isolation ratio.
``--bare-pynetdicom N``: also N processes of bench/bare_scp.py sharing the port, pynetdicom
acknowledging without storing anything: the ceiling of a receiver built on pynetdicom.

    .venv/bin/python bench/ingest.py [--rounds 5] [--senders 4] [--busy-workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
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
from ports import free_port, listening_sockets, wait_port  # bench/ports.py
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


def send(port: int, ae: str, batches: list[list[Path]], env: dict[str, str]) -> float:
    """Each batch by its own storescu process, all at once; seconds until the last is done."""
    start = time.perf_counter()
    senders = [
        subprocess.Popen(
            [STORESCU, "-aet", "STORESCU", "-aec", ae, "127.0.0.1", str(port), *map(str, files)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for files in batches
    ]
    for sender in senders:
        _, errors = sender.communicate()
        if sender.returncode != 0:
            raise RuntimeError(f"storescu failed: {errors.decode()[-500:]}")
    return time.perf_counter() - start


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def process_tree(pid: int) -> dict[str, int]:
    """The node's processes by name: supervisor, each role, each role's worker processes."""
    found = {"supervisor": pid}
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    for child in children.get(pid, []):
        arguments = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if b"--role" in arguments:
            role = arguments[arguments.index(b"--role") + 1].decode()
            name = role if role not in found else f"{role}-{child}"
            found[name] = child
            for index, grandchild in enumerate(children.get(child, [])):
                found[f"{name}-process-{index}"] = grandchild
    return found


def run_storescp(batches: list[list[Path]], work: Path, env: dict[str, str]) -> float:
    port, out = free_port(), work / "storescp-out"
    out.mkdir()
    fork = ["--fork"] if len(batches) > 1 else []
    proc = subprocess.Popen([STORESCP, *fork, "-aet", "STORESCP", "-od", str(out), str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        return send(port, "STORESCP", batches, env)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(out)


def run_bare_pynetdicom(batches: list[list[Path]], processes: int, env: dict[str, str]
                        ) -> float:
    """``processes`` bench/bare_scp.py sharing one port: pynetdicom acknowledging without
    storing, the ceiling of any receiver built on it."""
    port = free_port()
    servers = [subprocess.Popen([sys.executable, str(ROOT / "bench" / "bare_scp.py"), str(port)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(processes)]
    try:
        if not wait_listeners(port, processes):
            raise RuntimeError("the bare pynetdicom servers did not all listen")
        return send(port, "AINODE", batches, env)
    finally:
        for server in servers:
            server.terminate()
            server.wait()


LESION = {"name": "busy", "match": {"modality": "CT"}, "model": "ct_lesion_unet", "outputs": []}


def run_ainode(batches: list[list[Path]], work: Path, env: dict[str, str],
               overrides: dict[str, str], busy: list[list[Path]] | None = None,
               ) -> tuple[float, dict[str, float]]:
    """Seconds to receive ``batches``; peak RSS (MB) per process. With ``busy``, those series
    are sent first and the measurement starts once their jobs all run."""
    port, data = free_port(), work / "ainode-var"
    config = work / "node.yaml"
    settings: dict[str, object] = {
        "node": {"ae_title": "AINODE", "dicom_port": port, "data_dir": str(data),
                 "bind": "127.0.0.1", "min_free_disk_mb": 64},
        "peers": [{"name": "MODALITY", "ae_title": "STORESCU", "host": "127.0.0.1",
                   "port": 11113}],
        "series": {"quiet_seconds": 30},
    }
    if busy:
        settings["series"] = {"quiet_seconds": 1, "sweep_interval_s": 0.2}
        settings["inference"] = {"workers": len(busy),
                                 "model_repository": str(ROOT / "model_repository")}
        settings["pipelines"] = [LESION]
    config.write_text(json.dumps(settings))
    ainode = str(Path(sys.executable).parent / "ainode")
    proc = subprocess.Popen([ainode, "serve", "--config", str(config), "--log-level", "warning"],
                            env={**env, **overrides}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        receivers = int({**env, **overrides}.get("AINODE__NODE__RECEIVER_PROCESSES", "1"))
        if not wait_listeners(port, receivers):  # SO_REUSEPORT spreads only among those bound
            raise RuntimeError(f"{receivers} receivers did not all listen")
        if busy:
            send(port, "AINODE", busy, env)
            if not wait_running(data / "jobs.sqlite3", len(busy)):
                raise RuntimeError("the busy jobs did not start")
        elapsed = send(port, "AINODE", batches, env)
        if busy and not wait_running(data / "jobs.sqlite3", len(busy), timeout=0.1):
            raise RuntimeError("the busy jobs ended before the measurement did")
        rss = {name: peak_rss_mb(pid) for name, pid in process_tree(proc.pid).items()}
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(data)
    return elapsed, rss


def durable_write_ms(files: list[Path], work: Path) -> float:
    """Median ms the node's own durable write (node.store.spool.Spool.write: temporary file,
    fdatasync, rename, directory fsync) takes per CT slice on this file system: the part of
    each acknowledgement that no receiver keeping the fsync can skip."""
    from node.store.spool import Spool

    spool = Spool(work / "floor-spool")
    contents = [f.read_bytes() for f in files]
    seconds = []
    for index, content in enumerate(contents):
        started = time.perf_counter()
        spool.write(spool.path_for("1.2", "1.2.3", f"1.2.3.{index}"), (content,))
        seconds.append(time.perf_counter() - started)
    shutil.rmtree(spool.root)
    return statistics.median(seconds) * 1000


def wait_listeners(port: int, count: int, timeout: float = 60) -> bool:
    """Whether ``count`` sockets listen on ``port`` (receiver processes sharing it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening_sockets(port) >= count:
            return True
        time.sleep(0.1)
    return False


def wait_running(database: Path, count: int, timeout: float = 180) -> bool:
    import sqlite3

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(sqlite3.Error), sqlite3.connect(database) as db:
            running = db.execute("SELECT COUNT(*) FROM jobs WHERE state='running'").fetchone()
            if running[0] >= count:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--senders", type=int, default=1,
                        help="concurrent storescu processes, 402 instances each")
    parser.add_argument("--busy-workers", type=int, default=0,
                        help="also measure the node while N workers run ct_lesion_unet")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/ct-abdomen")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="also run ainode with these AINODE__* overrides, e.g. "
             "nofsync:AINODE__NODE__FSYNC=false",
    )
    parser.add_argument("--bare-pynetdicom", type=int, default=0, metavar="PROCESSES",
                        help="also pynetdicom acknowledging without storing (bench/bare_scp.py),"
                             " in this many processes sharing the port: the ceiling")
    args = parser.parse_args()
    variants: dict[str, dict[str, str]] = {"ainode": {}}
    for spec in args.variant:
        name, _, assignments = spec.partition(":")
        variants[f"ainode_{name}"] = dict(a.split("=", 1) for a in assignments.split(",") if a)
    env = {**os.environ, "TCP_NODELAY": "1"}
    with tempfile.TemporaryDirectory(prefix="ainode-bench-", dir=ROOT.parent) as tmp:
        work = Path(tmp)
        copies = 3 * args.senders + args.busy_workers
        all_files = make_copies(args.data, work / "data", copies=copies)
        series = [all_files[i:i + 134] for i in range(0, len(all_files), 134)]
        busy_series = series[len(series) - args.busy_workers:] if args.busy_workers else []
        per_sender = [list(itertools.chain.from_iterable(series[1 + 3 * i:4 + 3 * i]))
                      for i in range(args.senders)]
        workloads = {"ct134": [series[0]], f"ct402x{args.senders}": per_sender}
        if args.senders == 1:
            workloads = {"ct134": [series[0]], "ct402": per_sender}
        size_mb = {k: sum(f.stat().st_size for b in v for f in b) / 1e6
                   for k, v in workloads.items()}
        peers = ["storescp", *variants]
        if args.bare_pynetdicom:
            peers.append("pynetdicom_bare")
        if args.busy_workers:
            peers.append("ainode_busy")
        times: dict[str, dict[str, list[float]]] = {k: {p: [] for p in peers} for k in workloads}
        rss: dict[str, dict[str, float]] = {}
        write_ms: list[float] = []
        for round_no in range(args.rounds):
            write_ms.append(durable_write_ms(series[0], work))
            for name, batches in workloads.items():
                order = peers if round_no % 2 == 0 else peers[::-1]
                for peer in order:
                    if peer == "storescp":
                        times[name][peer].append(run_storescp(batches, work, env))
                        continue
                    if peer == "pynetdicom_bare":
                        times[name][peer].append(
                            run_bare_pynetdicom(batches, args.bare_pynetdicom, env))
                        continue
                    busy = busy_series if peer == "ainode_busy" else None
                    elapsed, peaks = run_ainode(batches, work, env, variants.get(peer, {}), busy)
                    times[name][peer].append(elapsed)
                    merged = rss.setdefault(peer, {})
                    for process, mb in peaks.items():
                        merged[process] = round(max(merged.get(process, 0.0), mb), 1)
        result: dict[str, object] = {"rounds": args.rounds, "tcp_nodelay": True,
                                     "senders": args.senders, "busy_workers": args.busy_workers,
                                     "storescp_fork": args.senders > 1, "ainode_fsync": True,
                                     "variants": variants, "workloads": {}}
        for name, batches in workloads.items():
            instances = sum(len(b) for b in batches)
            entry: dict[str, float] = {"instances": instances, "mb": round(size_mb[name], 1)}
            for peer in peers:
                median = statistics.median(times[name][peer])
                entry[f"{peer}_seconds_median"] = round(median, 3)
                entry[f"{peer}_instances_per_s"] = round(instances / median, 1)
                entry[f"{peer}_mb_per_s"] = round(size_mb[name] / median, 1)
            for peer in peers[1:]:
                entry[f"ratio_{peer}_over_storescp"] = round(
                    entry[f"{peer}_instances_per_s"] / entry["storescp_instances_per_s"], 3)
            if args.bare_pynetdicom:  # issue 29's measure: the node against its ceiling
                for peer in variants:
                    entry[f"ratio_{peer}_over_pynetdicom_bare"] = round(
                        entry[f"{peer}_instances_per_s"]
                        / entry["pynetdicom_bare_instances_per_s"], 3)
            if args.busy_workers:
                entry["ratio_busy_over_idle"] = round(
                    entry["ainode_busy_instances_per_s"] / entry["ainode_instances_per_s"], 3)
            if args.bare_pynetdicom and name == "ct134":  # one sender: one write at a time
                # the most a receiver that fsyncs as the node does could reach over bare
                # pynetdicom if everything else it does cost nothing
                bare = entry["pynetdicom_bare_seconds_median"]
                entry["ceiling_ratio_with_durable_write"] = round(
                    bare / (bare + instances * statistics.median(write_ms) / 1000), 3)
            result["workloads"][name] = entry  # type: ignore[index]
        result["durable_write_ms_median"] = round(statistics.median(write_ms), 3)
        result["peak_rss_mb"] = rss
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
