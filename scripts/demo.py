#!/usr/bin/env python3
"""`make demo`: the whole loop on the shipped defaults (config/node.yaml, embedded inference).

With Orthanc installed (`make system-deps`, Debian package `orthanc`), a real Orthanc plays the
PACS: the sample CT is uploaded to it, Orthanc pushes the study to the node, and the node's
SEG + SR + Secondary Capture land back in Orthanc. Without Orthanc the CT is sent with dcmtk
storescu (or `ainode send`) and the results wait in the outbox. Prints a per-stage timing table
and writes a PNG of the burned-in overlay to var/demo/overlay.png.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CT = ROOT.parent / "shared" / "data" / "ct-abdomen"
MR = ROOT.parent / "shared" / "data" / "mr-brain"
BIN = Path(sys.executable).parent
ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port(start: int) -> int:
    port = start
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
        port += 1


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited before listening")
        time.sleep(0.1)
    raise SystemExit(f"{what} is not listening on {port}")


def orthanc_api(port: int, path: str, body: bytes | None = None) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                     method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310 - loopback http
        payload = response.read()
    return json.loads(payload) if payload else None


@contextlib.contextmanager
def orthanc(demo: Path, http_port: int, dicom_port: int, node_port: int) -> Iterator[None]:
    config = {
        "Name": "ainode-demo-pacs", "StorageDirectory": str(demo / "orthanc"),
        "IndexDirectory": str(demo / "orthanc"), "HttpPort": http_port,
        "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
        "DicomModalities": {"ainode": ["AINODE", "127.0.0.1", node_port]},
        "DicomAlwaysAllowStore": True, "DicomCheckModalityHost": False,
    }
    (demo / "orthanc.json").write_text(json.dumps(config))
    with open(demo / "orthanc.log", "wb") as log:
        proc = subprocess.Popen([str(ORTHANC), str(demo / "orthanc.json")], stdout=log,
                                stderr=subprocess.STDOUT, env=ENV)
    try:
        wait_port(http_port, proc, "Orthanc")
        wait_port(dicom_port, proc, "Orthanc")
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_for_results(db: Path, series: int, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            routed = conn.execute("SELECT COUNT(*) FROM series WHERE route_state IS NOT NULL"
                                  ).fetchone()[0] >= series
            pending = conn.execute("SELECT COUNT(*) FROM jobs WHERE state IN "
                                   "('queued', 'running')").fetchone()[0]
            unsent = conn.execute("SELECT COUNT(*) FROM outbox WHERE state='queued' AND "
                                  "attempts=0").fetchone()[0] if conn.execute(
                "SELECT name FROM sqlite_master WHERE name='outbox'").fetchone() else 0
        if routed and not pending and not unsent:
            return
        time.sleep(0.5)
    print("timed out waiting for the results", file=sys.stderr)


def print_timings(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT pipeline, state, result, error FROM jobs ORDER BY id"
                            ).fetchall()
    stages = ["load", "preprocess", "infer", "postprocess", "encode"]
    print("\nper-stage seconds")
    print(f"{'pipeline':<12}{'state':<8}" + "".join(f"{s:>12}" for s in stages) + "  findings")
    for pipeline, state, result, error in rows:
        summary = json.loads(result) if result else {}
        seconds = summary.get("seconds", {})
        findings = ", ".join(f"{k} {v['volume_ml']:.1f} ml" for k, v in
                             summary.get("labels", {}).items() if v.get("present"))
        if summary.get("urgent"):
            findings = "URGENT " + findings
        print(f"{pipeline:<12}{state:<8}" + "".join(
            f"{seconds.get(s, 0):>12.2f}" for s in stages) + f"  {findings or error or ''}")


def print_brain(db: Path) -> None:
    """The real pretrained network's answer: the brain's volume on the head MR."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT result FROM jobs WHERE pipeline='mr-brain' AND state='done'"
                            ).fetchall()
    for (result,) in rows:
        summary = json.loads(result)
        brain = summary.get("labels", {}).get("brain", {})
        print(f"\nmr-brain: {summary.get('model')} {summary.get('model_version')} (deepbet 1.0.2,"
              f" pretrained): brain volume {brain.get('volume_ml', 0):.1f} ml")


def write_png(demo: Path, db: Path) -> None:
    with sqlite3.connect(db) as conn:
        results = [json.loads(r[0]) for r in conn.execute(
            "SELECT result FROM jobs WHERE state='done' ORDER BY id").fetchall()]
    for summary in results:
        sc = Path(summary["result_dir"]) / "sc.dcm"
        if sc.exists():
            target = demo / "overlay.png"
            Image.fromarray(pydicom.dcmread(sc).pixel_array).save(target)
            print(f"\noverlay of one slice: {target}")
            return


def main() -> int:
    demo = Path(os.environ.get("AINODE_DEMO_DIR", ROOT / "var" / "demo"))
    shutil.rmtree(demo, ignore_errors=True)
    demo.mkdir(parents=True)
    config = yaml.safe_load((ROOT / "config" / "node.yaml").read_text())
    node_port = free_port(config["node"]["dicom_port"])
    http_port, pacs_port = free_port(18042), free_port(14242)
    node_http_port = free_port(config["node"]["http_port"])
    config["node"].update(dicom_port=node_port, bind="127.0.0.1", data_dir=str(demo / "data"),
                          min_free_disk_mb=256, http_port=node_http_port)
    config["series"]["quiet_seconds"] = 2
    config["inference"]["model_repository"] = str(ROOT / "model_repository")
    for peer in config["peers"]:
        if peer["name"] == "PACS":
            peer["port"] = pacs_port
    config_path = demo / "node.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    use_orthanc = ORTHANC.exists()
    pacs = (f"Orthanc on {pacs_port} (http {http_port})" if use_orthanc
            else "none (Orthanc is not installed: results stay in the outbox)")
    print(f"node on 127.0.0.1:{node_port} (dashboard http://127.0.0.1:{node_http_port}/ui);"
          f" PACS: {pacs}", flush=True)
    node = subprocess.Popen([str(BIN / "ainode"), "serve", "--config", str(config_path)],
                            env=ENV)
    try:
        wait_port(node_port, node, "the node")
        series = {"CT": sorted(CT.glob("*.dcm")), "MR": sorted(MR.glob("*.dcm"))}
        studies = []
        stack = contextlib.ExitStack()
        with stack:
            if use_orthanc:
                stack.enter_context(orthanc(demo, http_port, pacs_port, node_port))
                for modality, files in series.items():
                    for f in files:
                        answer = orthanc_api(http_port, "/instances", f.read_bytes())
                    studies.append(answer["ParentStudy"])
                    print(f"uploaded {len(files)} {modality} images to Orthanc", flush=True)
                print("Orthanc pushes the studies to the node", flush=True)
                orthanc_api(http_port, "/modalities/ainode/store", json.dumps(
                    {"Resources": studies, "Synchronous": True}).encode())
            else:
                for modality, files in series.items():
                    print(f"sending {len(files)} {modality} images with dcmtk storescu",
                          flush=True)
                    subprocess.run(["/usr/bin/storescu", "-aet", "STORESCU", "-aec", "AINODE",
                                    "127.0.0.1", str(node_port), *map(str, files)], env=ENV,
                                   check=True)
            sent = time.perf_counter()
            wait_for_results(demo / "data" / "jobs.sqlite3", len(series))
            print(f"results ready {time.perf_counter() - sent:.1f} s after the last image")
            subprocess.run([str(BIN / "ainode"), "status", "--config", str(config_path)],
                           check=True)
            print_timings(demo / "data" / "jobs.sqlite3")
            print_brain(demo / "data" / "jobs.sqlite3")
            if use_orthanc:
                held = [s for study in studies
                        for s in orthanc_api(http_port, f"/studies/{study}/series?expand")]
                print("\nin Orthanc now: " + ", ".join(
                    f"{s['MainDicomTags'].get('Modality')} '"
                    f"{s['MainDicomTags'].get('SeriesDescription', '')}'" for s in held))
            write_png(demo, demo / "data" / "jobs.sqlite3")
        return 0
    finally:
        node.terminate()
        node.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
