"""Issue 24 §3: credentials masked wherever a URL is printed or logged, patient values
redacted by value (whatever they contain, tracebacks too), live peers validated like the file
and every CLI table escaping control characters."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
from pydicom import Dataset
from typer.testing import CliRunner

from node.cli import app
from node.operations.peers import PeerChangeRefused, PeerDirectory, validate_peer
from node.runtime import logs
from node.settings import load_settings
from node.store.jobs import JobStore

SECRET_URLS = {
    "postgresql://ainode:Pg-S3cret@db.hospital:5432/ainode": "Pg-S3cret",
    "https://robot:Web-S3cret@pacs.hospital/dicom-web": "Web-S3cret",
    "https://ris.hospital/hook?apikey=Key-S3cret&x=1": "Key-S3cret",
    "https://h/x?access_token=Tok-S3cret": "Tok-S3cret",
    "https://h/x?X-Amz-Signature=Sig-S3cret&b=2": "Sig-S3cret",
}


@pytest.mark.parametrize("url", sorted(SECRET_URLS))
def test_credentials_in_a_url_are_masked(url: str) -> None:
    masked = logs.mask_credentials(f"cannot reach {url} (refused)")
    assert SECRET_URLS[url] not in masked and "***" in masked
    assert masked.startswith("cannot reach ") and masked.endswith(" (refused)")


def test_config_check_masks_every_credential(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        f"node: {{data_dir: {tmp_path}}}\n"
        "store: {url: 'postgresql://ainode:Pg-S3cret@db.hospital:5432/ainode'}\n"
        "peers: [{name: PACS, ae_title: PACS, host: pacs, port: 104,\n"
        "         dicomweb_url: 'https://robot:Web-S3cret@pacs.hospital/dicom-web'}]\n"
        "notify: [{name: ris, webhook: 'https://ris.hospital/hook?apikey=Key-S3cret'}]\n")
    result = CliRunner().invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 0, result.output
    for secret in ("Pg-S3cret", "Web-S3cret", "Key-S3cret"):
        assert secret not in result.output
    assert "db.hospital:5432" in result.output and "pacs.hospital/dicom-web" in result.output


def _captured(caplog: pytest.LogCaptureFixture) -> list[logging.Filter]:
    added: list[logging.Filter] = [kind() for kind in logs.FILTERS]
    for f in added:
        caplog.handler.addFilter(f)
    return added


NAMES = ['SMITH "JACK" JOHN', 'EVIL"><img src=x onerror=alert(1)>^JANE', "O'BRIEN^MARY"]


@pytest.mark.parametrize("name", NAMES)
def test_patient_values_are_redacted_whatever_they_contain(
        caplog: pytest.LogCaptureFixture, name: str) -> None:
    caplog.set_level(logging.INFO)
    added = _captured(caplog)
    dataset = Dataset()
    dataset.PatientName = name
    dataset.PatientID = "MRN-0042"
    dataset.PatientBirthDate = "19700101"
    logging.captureWarnings(True)
    try:
        with logs.redacting(dataset):
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.warn(f"The string {name} is unlikely to represent a person name",
                              UserWarning, stacklevel=1)
            logging.getLogger("pydicom").warning("value %s for MRN-0042 born 19700101", name)
            logging.getLogger("node.jobs.orchestrator").info("job 3: %s", dataset.PatientID)
            try:
                raise ValueError(f"cannot encode {name}")
            except ValueError:
                logging.getLogger("highdicom.seg").exception("encoding failed")
        logging.getLogger("node.jobs.orchestrator").info("job 4 done")  # outside: untouched
    finally:
        logging.captureWarnings(False)
        for f in added:
            caplog.handler.removeFilter(f)
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    for part in ("SMITH", "JACK", "JOHN", "onerror", "JANE", "BRIEN", "MARY", "MRN-0042",
                 "19700101"):
        if part in name or part in ("MRN-0042", "19700101"):
            assert part not in text, f"{part!r} leaked"
    assert "job 3: <redacted>" in text and "job 4 done" in text
    assert "Traceback" in text and "ValueError" in text  # the traceback kept, redacted


def test_live_peers_are_validated_like_the_file() -> None:
    hostile = [
        {"name": "../jobs/1", "ae_title": "X", "host": "h", "port": 1},
        {"name": "a?b", "ae_title": "X", "host": "h", "port": 1},
        {"name": "..", "ae_title": "X", "host": "h", "port": 1},
        {"name": "evil\n2026 fake line", "ae_title": "X", "host": "h", "port": 1},
        {"name": "ESC", "ae_title": "X\x1b[2J", "host": "h", "port": 1},
        {"name": "BS", "ae_title": "A\\B", "host": "h", "port": 1},
        {"name": "HTML", "ae_title": "X", "host": "<img src=x>", "port": 1},
        {"name": "JS", "ae_title": "X", "host": "h", "port": 1,
         "dicomweb_url": "javascript:alert(1)"},
        {"name": "FILE", "ae_title": "X", "host": "h", "port": 1,
         "dicomweb_url": "file:///etc/passwd"},
        {"name": "NET", "ae_title": "X", "host": "h", "port": 1, "hosts": ["a b"]},
    ]
    for definition in hostile:
        with pytest.raises(PeerChangeRefused, match=r"peers\."):
            validate_peer(definition)
    peer = validate_peer({"name": "CT-2.a_b", "ae_title": "CT2", "host": "ct2.radiology.local",
                          "port": 104, "hosts": ["10.1.2.0/24", "fe80::1"],
                          "dicomweb_url": "https://pacs.local/dicom-web"})
    assert peer.name == "CT-2.a_b"


def test_cli_tables_escape_control_characters(tmp_path: Path) -> None:
    """An audit line written with a hostile value (a detail from a caller) shows escaped."""
    data_dir = tmp_path / "var"
    config = tmp_path / "node.yaml"
    config.write_text(f"node: {{data_dir: {data_dir}}}\n")
    data_dir.mkdir()
    store = JobStore(data_dir / "jobs.sqlite3")
    try:
        store.audit("EVIL\x1b[2J", "association rejected", "AE \x1b]0;pwned\x07 [red]x[/red]\n"
                    "2026-12-03 fake line", 1.0e9 + 1)
        PeerDirectory(load_settings(config, environ={}), store)
    finally:
        store.close()
    result = CliRunner().invoke(app, ["audit", "--config", str(config), "--since", "2000-01-01"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "\\x1b" in result.output and "[red]x[/red]" in result.output
