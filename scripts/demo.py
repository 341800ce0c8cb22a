#!/usr/bin/env python3
"""`make demo`: start the node on the shipped config, send it the sample CT, show the results.

The node runs with config/node.yaml (ports moved off the defaults if they are taken), its data
in var/demo; the CT is sent with dcmtk storescu when installed, else with `ainode send`.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CT = ROOT.parent / "shared" / "data" / "ct-abdomen"
BIN = Path(sys.executable).parent


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def main() -> int:
    demo = ROOT / "var" / "demo"
    shutil.rmtree(demo, ignore_errors=True)
    demo.mkdir(parents=True)
    config = yaml.safe_load((ROOT / "config" / "node.yaml").read_text())
    port = config["node"]["dicom_port"]
    while not port_free(port):
        port += 1
    config["node"].update(dicom_port=port, bind="127.0.0.1", data_dir=str(demo / "data"),
                          min_free_disk_mb=256)
    config["series"]["quiet_seconds"] = 2
    config["peers"].append({"name": "SELF", "ae_title": config["node"]["ae_title"],
                            "host": "127.0.0.1", "port": port})
    config_path = demo / "node.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "TCP_NODELAY": "1"}
    print(f"starting ainode on 127.0.0.1:{port} (config {config_path})", flush=True)
    node = subprocess.Popen([BIN / "ainode", "serve", "--config", config_path], env=env)
    try:
        deadline = time.monotonic() + 20
        while port_free(port):
            if node.poll() is not None or time.monotonic() > deadline:
                print("the node did not start", file=sys.stderr)
                return 1
            time.sleep(0.1)
        files = sorted(CT.glob("*.dcm"))
        started = time.perf_counter()
        if Path("/usr/bin/storescu").exists():
            print(f"sending {len(files)} CT slices with dcmtk storescu", flush=True)
            subprocess.run(["/usr/bin/storescu", "-aet", "STORESCU", "-aec",
                            config["node"]["ae_title"], "127.0.0.1", str(port), *map(str, files)],
                           env=env, check=True)
        else:
            print(f"sending {len(files)} CT slices with ainode send", flush=True)
            subprocess.run([BIN / "ainode", "send", "--config", config_path, "--to", "SELF",
                            "--calling-ae", "STORESCU", CT], check=True)
        print(f"sent in {time.perf_counter() - started:.2f} s; waiting for the series to complete"
              " and its jobs to finish", flush=True)
        db = demo / "data" / "jobs.sqlite3"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with sqlite3.connect(db) as conn:
                complete = conn.execute(
                    "SELECT COUNT(*) FROM series WHERE state='complete' AND route_state IS NOT NULL"
                ).fetchone()[0]
                pending = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')"
                ).fetchone()[0]
            if complete and not pending:
                break
            time.sleep(0.5)
        subprocess.run([BIN / "ainode", "status", "--config", config_path], check=True)
        return 0
    finally:
        node.terminate()
        node.wait(timeout=20)


if __name__ == "__main__":
    sys.exit(main())
