#!/usr/bin/env python3
"""STOW-RS ingest benchmark: the 134-slice CT stored by STOW-RS into ainode and into Orthanc
(its DICOMweb plugin), in the same run, alternating peers each round; ainode also by C-STORE
(dcmtk storescu, TCP_NODELAY=1) for comparison. Two workloads: one request carrying the whole
series, and one request per instance (a client that sends as it goes). ainode runs with its
shipped durability (fsync, indexed before the response). Prints one JSON object: medians per
peer and workload, and the ratios ainode/Orthanc.

    .venv/bin/python bench/stow.py [--rounds 5]
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
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from ports import free_port, serving  # bench/ports.py

ROOT = Path(__file__).resolve().parent.parent
CT = ROOT.parent / "shared" / "data" / "ct-abdomen"
ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
STORESCU = "/usr/bin/storescu"
ENV = {**os.environ, "TCP_NODELAY": "1"}


def multipart(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(url: str, requests_: list[tuple[bytes, str]]) -> float:
    """Seconds to POST every request; each must store everything it carries."""
    with requests.Session() as session:
        started = time.perf_counter()
        for body, content_type in requests_:
            answer = session.post(url, data=body, headers={"Content-Type": content_type},
                                  timeout=300)
            if answer.status_code != 200:
                raise RuntimeError(f"{url}: HTTP {answer.status_code} {answer.text[:200]}")
        return time.perf_counter() - started


@contextmanager
def ainode(work: Path) -> Iterator[tuple[int, int]]:
    """A fresh ainode serve: (DICOM port, HTTP port)."""
    data = work / "ainode-var"
    port, http_port = free_port(), free_port()
    config = work / "node.yaml"
    config.write_text(json.dumps({
        "node": {"ae_title": "AINODE", "dicom_port": port, "http_port": http_port,
                 "data_dir": str(data), "bind": "127.0.0.1", "min_free_disk_mb": 64},
        "peers": [{"name": "MODALITY", "ae_title": "STORESCU", "host": "127.0.0.1",
                   "port": 11113}],
        "series": {"quiet_seconds": 60}}))
    try:
        with serving([str(Path(sys.executable).parent / "ainode"), "serve", "--config",
                      str(config), "--log-level", "warning"], [port, http_port], ENV):
            yield port, http_port
    finally:
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def orthanc(work: Path) -> Iterator[int]:
    storage = work / "orthanc-db"
    http_port = free_port()
    config = work / "orthanc.json"
    config.write_text(json.dumps({
        "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "HttpPort": http_port, "DicomPort": free_port(), "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}))
    try:
        with serving([ORTHANC, str(config)], [http_port], ENV, timeout_s=30):
            yield http_port
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    files = sorted(CT.glob("*.dcm"))
    parts = [f.read_bytes() for f in files]
    workloads: dict[str, list[tuple[bytes, str]]] = {
        "one_request": [multipart(parts)],
        "request_per_instance": [multipart([part]) for part in parts],
    }
    times: dict[str, list[float]] = {}

    def measure(name: str, run: Callable[[], float]) -> None:
        times.setdefault(name, []).append(run())

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for _ in range(rounds):
            for workload, requests_ in workloads.items():
                with ainode(work) as (_, http_port):
                    measure(f"ainode_stow_{workload}", lambda r=requests_, p=http_port: stow(
                        f"http://127.0.0.1:{p}/dicomweb/studies", r))
                with orthanc(work) as http_port:
                    measure(f"orthanc_stow_{workload}", lambda r=requests_, p=http_port: stow(
                        f"http://127.0.0.1:{p}/dicom-web/studies", r))
            with ainode(work) as (port, _):
                def store() -> float:
                    started = time.perf_counter()
                    subprocess.run([STORESCU, "-aet", "STORESCU", "-aec", "AINODE",
                                    "127.0.0.1", str(port), *map(str, files)], env=ENV,
                                   check=True, capture_output=True)
                    return time.perf_counter() - started
                measure("ainode_cstore", store)
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "instances": len(files), "megabytes": round(sum(map(len, parts)) / 1e6, 1),
        "rounds": rounds,
        "median_seconds": {k: round(v, 3) for k, v in medians.items()},
        "instances_per_second": {k: round(len(files) / v, 1) for k, v in medians.items()},
        "ratio_ainode_to_orthanc": {
            workload: round(medians[f"orthanc_stow_{workload}"]
                            / medians[f"ainode_stow_{workload}"], 2)
            for workload in workloads},  # > 1: ainode faster
        "ratio_stow_to_cstore_ainode": round(
            medians["ainode_cstore"] / medians["ainode_stow_one_request"], 2),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
