"""Shared fixtures: test data paths, free ports, a real `ainode serve` process, real dcmtk."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from dicomweb_client.api import DICOMwebClient

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
CT_DIR = DATA / "ct-abdomen"
STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def require(tool: str) -> str:
    """A real peer the test needs; CI installs them all, so a missing one is a failure there."""
    if not Path(tool).exists() and shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed (make test installs it)")
        pytest.skip(f"{tool} is not installed; run `make test`")
    return tool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


def wait_for(predicate: Any, timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


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

    def start(self) -> NodeProcess:
        ainode = str(Path(sys.executable).parent / "ainode")
        roles = [argument for role in self.roles for argument in ("--role", role)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [ainode, "serve", "--config", str(self.config_path), *roles,
                 "--log-level", self.log_level],
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
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

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
        return sorted((self.data_dir / "spool").glob("*/*/*.dcm"))


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


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[NodeProcess] = []

    def make(**sections: Any) -> NodeProcess:
        port = free_port()
        data_dir = tmp_path / f"var{len(started)}"
        config_path = tmp_path / f"node{len(started)}.yaml"
        write_config(config_path, port, data_dir, **sections)
        node = NodeProcess(config_path, data_dir, port, tmp_path / f"node{len(started)}.log")
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


@pytest.fixture
def node(node_factory: Any) -> NodeProcess:
    require(STORESCU)
    return node_factory().start()  # type: ignore[no-any-return]


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


def ct_files() -> list[Path]:
    files = sorted(CT_DIR.glob("*.dcm"))
    assert len(files) == 134, "the shared CT has 134 slices"
    return files


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


TRITON_SCRIPT = ROOT / "scripts" / "triton.sh"


def triton_available(grpc_port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", grpc_port)) == 0


@pytest.fixture(scope="session")
def triton_grpc_url() -> str:
    """The tritonserver `make test` started (make triton-up), serving model_repository/."""
    port = int(os.environ.get("TRITON_GRPC_PORT", "8001"))
    if not triton_available(port):
        if os.environ.get("CI"):
            pytest.fail(f"no tritonserver on port {port}: make test starts one (make triton-up)")
        pytest.skip(f"no tritonserver on port {port}; run `make triton-up`")
    return f"127.0.0.1:{port}"


@dataclass
class TritonProcess:
    """A private tritonserver (own ports and run dir), to stop and crash in a test."""

    run_dir: Path
    http_port: int
    grpc_port: int
    repository: Path = ROOT / "model_repository"
    extra_args: str = ""  # e.g. "--model-control-mode=explicit --load-model=*"

    def _script(self, command: str) -> None:
        env = {**os.environ, "TRITON_RUN_DIR": str(self.run_dir),
               "TRITON_EXTRA_ARGS": self.extra_args,
               "TRITON_MODEL_REPOSITORY": str(self.repository),
               "TRITON_HTTP_PORT": str(self.http_port), "TRITON_GRPC_PORT": str(self.grpc_port),
               "TRITON_METRICS_PORT": str(free_port())}
        subprocess.run(["bash", str(TRITON_SCRIPT), command], env=env, check=True,
                       capture_output=True, timeout=180)

    def up(self) -> None:
        self._script("up")

    def down(self) -> None:
        self._script("down")

    def crash(self) -> None:
        self._script("kill")

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int:
        return int((self.run_dir / "pid").read_text())


@pytest.fixture
def private_triton(tmp_path: Path) -> Iterator[TritonProcess]:
    if not (ROOT / ".triton-venv").exists() and not os.environ.get("CI"):
        pytest.skip("no .triton-venv; run `make triton-up` once")
    server = TritonProcess(tmp_path / "triton", free_port(), free_port())
    try:
        yield server
    finally:
        server.crash()


ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


@dataclass
class Orthanc:
    """A real Orthanc PACS, from its own JSON config, with its DICOMweb plugin."""

    http_port: int
    dicom_port: int
    proc: subprocess.Popen[bytes]
    auth: tuple[str, str] | None = None

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def api(self, path: str, body: bytes | str | None = None, method: str | None = None) -> Any:
        data = body.encode() if isinstance(body, str) else body
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data,
                                         method=method or ("POST" if data is not None else "GET"))
        if self.auth:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=120) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def series_by_modality(self, study_uid: str) -> dict[str, list[dict[str, Any]]]:
        """QIDO-RS: the study's series (DICOM JSON), grouped by Modality."""
        found: dict[str, list[dict[str, Any]]] = {}
        for series in DICOMwebClient(self.dicomweb).search_for_series(study_uid):
            found.setdefault(series["00080060"]["Value"][0], []).append(series)
        return found

    def upload(self, files: list[Path]) -> str:
        """POST each file to /instances; returns the Orthanc study ID."""
        for f in files:
            answer = self.api("/instances", f.read_bytes())
        return str(answer["ParentStudy"])


@contextlib.contextmanager
def start_orthanc(tmp_path: Path, http_port: int, dicom_port: int, node_port: int,
                  users: dict[str, str] | None = None,
                  dicomweb_servers: dict[str, Any] | None = None) -> Iterator[Orthanc]:
    """``dicomweb_servers``: Orthanc's DICOMweb client's servers (``DicomWeb.Servers``)."""
    require(ORTHANC)
    storage = tmp_path / f"orthanc-{dicom_port}"
    config = {
        "Name": "ainode-test-pacs", "StorageDirectory": str(storage),
        "IndexDirectory": str(storage), "HttpPort": http_port,
        "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
        "HttpServerEnabled": True,
        "Plugins": [DICOMWEB_PLUGIN] if Path(DICOMWEB_PLUGIN).exists() else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full",
                     "SeriesMetadata": "Full", "Servers": dicomweb_servers or {}},
        "DicomModalities": {"ainode": ["AINODE", "127.0.0.1", node_port]},
        "DicomAlwaysAllowStore": True, "DicomCheckModalityHost": False,
        "StableAge": 1,
    }
    config_path = tmp_path / f"orthanc-{dicom_port}.json"
    config_path.write_text(json.dumps(config))
    with open(tmp_path / f"orthanc-{dicom_port}.log", "wb") as log:
        proc = subprocess.Popen([ORTHANC, str(config_path)], stdout=log,
                                stderr=subprocess.STDOUT, env=DCMTK_ENV)
    try:
        wait_port(http_port, proc=proc)
        wait_port(dicom_port, proc=proc)
        auth = next(iter(users.items())) if users else None
        yield Orthanc(http_port, dicom_port, proc, auth)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


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
    "lungs": {"category": ["SCT", "123037004", "Anatomical Structure"],
              "type": ["SCT", "39607008", "Lung"], "color": [40, 140, 255]},
    "bone": {"category": ["SCT", "123037004", "Anatomical Structure"],
             "type": ["SCT", "272673000", "Bone"], "color": [250, 80, 80]},
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


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster for the session (see tests/postgres.py)."""
    from tests.postgres import throwaway_cluster

    with throwaway_cluster(free_port()) as cluster:
        yield cluster


STORE_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=STORE_BACKENDS)
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Opens fresh, empty job stores on each backend (every store test runs on both)."""
    from node.store.database import PostgresDatabase
    from node.store.jobs import JobStore

    opened: list[JobStore] = []
    cluster = request.getfixturevalue("postgres") if request.param == "postgresql" else None

    def make() -> JobStore:
        if cluster is None:
            store = JobStore(tmp_path / f"jobs{len(opened)}.sqlite3")
        else:
            store = JobStore(PostgresDatabase(cluster.new_database()))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
