"""A real `ainode serve` process and the ways tests talk to it: dcmtk's storescu, `ainode send`,
raw C-STORE, HTTP; the sample CT pipeline."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import yaml

from tests.support.environment import (
    DCMTK_ENV,
    ROOT,
    STORESCU,
    ct_files,
    free_port,
    wait_for,
    wait_port,
)


@dataclass
class NodeProcess:
    """`ainode serve` as a real subprocess (so it can be SIGKILLed)."""

    config_path: Path
    data_dir: Path
    port: int
    log_path: Path
    ae_title: str = "AINODE"
    proc: subprocess.Popen[bytes] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    roles: tuple[str, ...] = ()  # `serve --role ...`; all roles (supervised) when empty
    env: dict[str, str] = field(default_factory=dict)  # e.g. AINODE__STORE__URL
    log_level: str = "info"
    arguments: tuple[str, ...] = ()  # more `serve` options, e.g. ("--log-format", "json")

    def start(self) -> NodeProcess:
        ainode = str(Path(sys.executable).parent / "ainode")
        roles = [argument for role in self.roles for argument in ("--role", role)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [ainode, "serve", "--config", str(self.config_path), *roles,
                 "--log-level", self.log_level, *self.arguments],
                stdout=log, stderr=subprocess.STDOUT, env={**DCMTK_ENV, **self.env},
            )
        if not self.roles or "receiver" in self.roles:
            wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL the node; returns once its role processes are gone too (they die with
        it, but a busy machine may take a moment): until then its port may still answer,
        and a restart would seem to listen before its own recovery has run."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        if not self.roles or "receiver" in self.roles:
            assert wait_for(lambda: not _port_open(self.port), 30, 0.05), \
                "the killed node's receiver still listens"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def http_port(self) -> int:
        """The web role's port, as the node's configuration file says."""
        return int(yaml.safe_load(self.config_path.read_text())["node"]["http_port"])

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.data_dir / "jobs.sqlite3") as db:
            return db.execute(sql, args).fetchall()

    def stored_files(self) -> list[Path]:
        """Instance files in the spool (<study>/<series>/*.dcm); folders that the node
        removes meanwhile (retention) are skipped, not an error."""
        spool = self.data_dir / "spool"
        found = []
        for folder, _, names in os.walk(spool):
            if len(Path(folder).relative_to(spool).parts) == 2 \
                    and not folder.startswith(str(spool / ".tmp")):
                found.extend(Path(folder) / name for name in names if name.endswith(".dcm"))
        return sorted(found)


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def http_call(port: int, path: str, body: Any = None, method: str | None = None,
              token: str | None = None, content_type: str = "application/json",
              timeout: float = 120) -> tuple[int, Any]:
    """One request to the node's web role on loopback: (status, JSON or text). ``body``:
    bytes as they are, anything else as JSON; POST when there is one, else GET."""
    data = body if isinstance(body, bytes) else (
        json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     method=method or ("POST" if data is not None else "GET"),
                                     headers={"Content-Type": content_type})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload, status = response.read(), response.status
    except urllib.error.HTTPError as error:
        payload, status = error.read(), error.code
    text = payload.decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def write_config(path: Path, port: int, data_dir: Path, **sections: Any) -> None:
    config: dict[str, Any] = {
        "node": {
            "ae_title": "AINODE", "dicom_port": port, "bind": "127.0.0.1",
            "http_port": free_port(),
            "data_dir": str(data_dir), "min_free_disk_mb": 64,
        },
        "peers": [
            {"name": "MODALITY", "ae_title": "STORESCU", "host": "127.0.0.1", "port": 11113},
            {"name": "ECHO", "ae_title": "ECHOSCU", "host": "127.0.0.1", "port": 11114},
        ],
        "series": {"quiet_seconds": 2, "sweep_interval_s": 0.2},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    path.write_text(yaml.safe_dump(config))


def storescu(node: NodeProcess, *files: Path | str, calling: str = "STORESCU",
             called: str | None = None, extra: tuple[str, ...] = (),
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Real dcmtk storescu, verbose so each response status is visible."""
    cmd = [STORESCU, "-v", "-aet", calling, "-aec", called or node.ae_title, *extra,
           "127.0.0.1", str(node.port), *map(str, files)]
    return subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, text=True, timeout=timeout)


def storescu_acknowledged(node: NodeProcess, files: list[Path], timeout: float = 60
                          ) -> Iterator[Path]:
    """Real dcmtk storescu sending ``files``: yields each file as its success response
    arrives (the caller may kill the node meanwhile: storescu then ends on its own)."""
    current = None
    with subprocess.Popen(
        [STORESCU, "-v", "-aet", "STORESCU", "-aec", node.ae_title, "127.0.0.1",
         str(node.port), *map(str, files)],
        env=DCMTK_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as sender:
        assert sender.stdout is not None
        for line in sender.stdout:
            if line.startswith("I: Sending file: "):
                current = Path(line.removeprefix("I: Sending file: ").strip())
            elif "Received Store Response (Success)" in line and current is not None:
                yield current
        sender.wait(timeout=timeout)


def ainode_send(node: NodeProcess, *files: Path) -> subprocess.CompletedProcess[str]:
    """`ainode send` as a real process, from a config whose peer SELF is ``node``."""
    config = node.config_path.with_name(node.config_path.stem + "-sender.yaml")
    settings = yaml.safe_load(node.config_path.read_text())
    settings["node"]["ae_title"] = "STORESCU"
    settings["peers"].append({"name": "SELF", "ae_title": node.ae_title, "host": "127.0.0.1",
                              "port": node.port})
    config.write_text(yaml.safe_dump(settings))
    ainode = str(Path(sys.executable).parent / "ainode")
    return subprocess.run([ainode, "send", "--config", str(config), "--to", "SELF",
                           *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def send_raw(node: NodeProcess, path: Path, calling: str = "STORESCU") -> pydicom.Dataset | None:
    """C-STORE a file's bytes exactly as on disk (pynetdicom chunked send: SOP class and
    transfer syntax from its meta, dataset never decoded). ``None`` when it cannot be sent."""
    from pynetdicom import AE, _config

    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        sop_class, syntax = meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID
    except Exception:
        return None
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    if not assoc.is_established:
        return None
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(path)
    except Exception:
        return None
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        if assoc.is_established:
            assoc.release()
    return status if "Status" in status else None


def store_with_ct(tmp_path: Path, calling_ae: str = "MOD") -> tuple[Any, Any]:
    """A real job store holding the sample CT as one complete series (files left in place)."""
    from node.dicom.files import read_identity
    from node.domain import CompletionReason
    from node.store.jobs import JobStore

    store = JobStore(tmp_path / "jobs.sqlite3")
    for path in ct_files():
        with open(path, "rb") as handle:
            identity = read_identity(handle)
        outcome = store.record_instance(identity.ref(str(path), 1, calling_ae, "AINODE"), 1.0)
    store.complete_series(outcome.series, CompletionReason.QUIET, 2.0)
    return store, outcome.series


# The sample pipeline of config/node.yaml: ct_body_seg -> SEG + SR + SC, with its segment codes.
SEGMENTS = {
    "body": {"category": ["SCT", "123037004", "Anatomical Structure"],
             "type": ["SCT", "38266002", "Entire body"], "color": [230, 190, 60]},
    "gas": {"category": ["SCT", "91720002", "Body Substance"],
            "type": ["SCT", "74947009", "Gas"], "color": [40, 140, 255]},
    "dense": {"category": ["SCT", "105590001", "Substance"],
              "type": ["SCT", "105590001", "Substance"], "color": [250, 80, 80]},
}


def ct_body_pipeline(destination: str = "PACS") -> dict[str, Any]:
    return {"name": "ct-body", "match": {"modality": "CT", "min_instances": 20},
            "model": "ct_body_seg", "outputs": ["seg", "sr", "sc"],
            "destinations": [destination], "segments": SEGMENTS}


def ct_body_node_sections(pacs_port: int) -> dict[str, Any]:
    """Config sections of a node running that pipeline and delivering to Orthanc as "PACS"."""
    return {
        "peers": [{"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs_port},
                  {"name": "MODALITY", "ae_title": "STORESCU", "host": "127.0.0.1",
                   "port": 11113}],
        "series": {"quiet_seconds": 1},
        "inference": {"model_repository": str(ROOT / "model_repository")},
        "egress": {"retry_s": 0.5, "max_retry_s": 1, "interval_s": 0.3},
        "pipelines": [ct_body_pipeline()],
    }


def role_processes(node_pid: int) -> dict[str, int]:
    """The role processes ``ainode serve`` supervises, by role."""
    roles = {}
    for pid, command in child_processes(node_pid):
        arguments = command.split(b"\0")
        if b"--role" in arguments:
            roles[arguments[arguments.index(b"--role") + 1].decode()] = pid
    return roles


def child_processes(parent: int) -> list[tuple[int, bytes]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            found.append((int(entry.name), command))
    return found
