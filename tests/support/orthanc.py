"""A real Orthanc as the PACS (DICOM and DICOMweb)."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomweb_client.api import DICOMwebClient

from tests.support.environment import DCMTK_ENV, require, wait_port

ORTHANC = "/usr/sbin/Orthanc"


DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
WSI_PLUGIN = "/usr/share/orthanc/plugins/libOrthancWSI.so"  # Debian orthanc-wsi: slide viewer


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
                  dicomweb_servers: dict[str, Any] | None = None,
                  plugins: tuple[str, ...] = ()) -> Iterator[Orthanc]:
    """``dicomweb_servers``: Orthanc's DICOMweb client's servers (``DicomWeb.Servers``);
    ``plugins``: more plugins to load (e.g. :data:`WSI_PLUGIN`)."""
    require(ORTHANC)
    storage = tmp_path / f"orthanc-{dicom_port}"
    config = {
        "Name": "ainode-test-pacs", "StorageDirectory": str(storage),
        "IndexDirectory": str(storage), "HttpPort": http_port,
        "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
        "HttpServerEnabled": True,
        "Plugins": [p for p in (DICOMWEB_PLUGIN, *plugins) if Path(p).exists()],
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
