"""POST /api/studies/{uid}/export on a real job store and spool: a study kept through
STOW-RS exported de-identified to a folder, audited with the caller; the refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.support.dicomweb import multipart
from tests.support.environment import ct_files


@pytest.fixture
def keyed(tmp_path: Path) -> list[dict[str, Any]]:
    key = tmp_path / "project.key"
    key.write_text("a key of more than sixteen bytes")
    return [{"name": "cohort", "path": str(tmp_path / "cohort"), "key_file": str(key)},
            {"name": "keyless", "path": str(tmp_path / "keyless"),
             "key_file": str(tmp_path / "missing.key")}]


def test_a_study_is_exported_under_its_pseudonym_and_audited(
        make_client: Any, keyed: list[dict[str, Any]], tmp_path: Path) -> None:
    client, context = make_client(research=keyed)
    files = ct_files()[:3]
    body, content_type = multipart(*(f.read_bytes() for f in files))
    assert client.post("/dicomweb/studies", content=body,
                       headers={"Content-Type": content_type}).status_code == 200
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    answer = client.post(f"/api/studies/{study}/export", json={"to": "cohort"})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["files"] == 3 and result["pseudonym"].startswith("2.25.")
    exported = sorted((tmp_path / "cohort" / result["pseudonym"]).rglob("*.dcm"))
    assert len(exported) == 3
    dataset = pydicom.dcmread(exported[0])
    assert dataset.StudyInstanceUID == result["pseudonym"] and dataset.PatientID.startswith(
        "ANON-")
    (line,) = [r for r in context.store.query("SELECT action, address, objects FROM audit")
               if r[0] == "research export"]
    assert line[1] == "testclient" and study in str(line[2])

    assert client.post(f"/api/studies/{study}/export",
                       json={"to": "nowhere"}).status_code == 404
    no_key = client.post(f"/api/studies/{study}/export", json={"to": "keyless"})
    assert no_key.status_code == 409 and "cannot read the de-identification key" in \
        no_key.json()["detail"]
    assert not (tmp_path / "keyless").exists()
    unknown = client.post("/api/studies/1.2.3.4/export", json={"to": "cohort"})
    assert unknown.status_code == 404 and "no instances" in unknown.json()["detail"]
