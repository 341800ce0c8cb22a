"""docs/conformance.md is `ainode conformance` output: regenerated here, it must not differ,
and its tables must list what the SCP really negotiates."""

from __future__ import annotations

from pathlib import Path

import pytest
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from typer.testing import CliRunner

from node.cli import app

ROOT = Path(__file__).resolve().parents[3]


def test_the_conformance_statement_has_not_drifted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the shipped config and its model repository
    result = CliRunner().invoke(app, ["conformance", "--config", "config/node.yaml"])
    assert result.exit_code == 0, result.output
    document = (ROOT / "docs" / "conformance.md").read_text()
    assert result.output == document, (
        "docs/conformance.md is stale: run `ainode conformance > docs/conformance.md`")


def test_its_tables_are_what_the_scp_negotiates(tmp_path: Path) -> None:
    from node.ingest.dimse import StorageHandlers, build_storage_ae
    from node.settings import Settings
    from node.store.spool import Spool

    document = (ROOT / "docs" / "conformance.md").read_text()
    settings = Settings.model_validate(  # no patching of pynetdicom's receive path here
        {"node": {"receive_to_disk": False, "event_driven_reactor": False}})
    handlers = StorageHandlers(settings, Spool(tmp_path), lambda ref, now: None,  # type: ignore
                               lambda outcome, batch: None, lambda batch, released: None)
    ae, _ = build_storage_ae(settings, handlers)
    supported = {str(c.abstract_syntax): set(map(str, c.transfer_syntax))
                 for c in ae.supported_contexts}
    assert len(supported) == len(AllStoragePresentationContexts) + 1  # + Verification
    for sop_class, syntaxes in supported.items():
        assert f"| {sop_class} |" in document, sop_class
        assert syntaxes == set(map(str, ALL_TRANSFER_SYNTAXES))
    for syntax in ALL_TRANSFER_SYNTAXES:
        assert f"| {syntax} |" in document
    for uid in ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34",
                "1.2.840.10008.5.1.4.1.1.7"):  # SEG, Comprehensive 3D SR, SC as SCU
        assert f"| {uid} |" in document
