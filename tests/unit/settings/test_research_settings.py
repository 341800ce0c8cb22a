"""research[] configuration and the option table the node ships."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from node.jobs.execute import RESEARCH_KIND, research_exports
from node.research.pseudonym import KeyMissing, load_key
from node.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def _settings(**research: Any) -> Settings:
    return Settings.model_validate({"research": [{"name": "cohort", "path": "/tmp/c",
                                                  **research}]})


def test_options_module_is_what_the_generator_makes_of_the_table() -> None:
    generated = subprocess.run([sys.executable, str(ROOT / "scripts/deid_options.py")],
                               capture_output=True, text=True, check=True).stdout
    assert (ROOT / "node/research/options.py").read_text() == generated


@pytest.mark.parametrize(("research", "message"), [
    ({"peer": "PACS"}, "exactly one of path, peer"),
    ({"profile": "everything"}, "is not one of"),
    ({"options": ["retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"]},
     "exclude each other"),
    ({"include_results": True}, "clean_structured_content"),
    ({"keep_private": ["0028,CREATOR,10"]}, "odd"),
    ({"options": ["clean_pixel_data"]}, "options"),
])
def test_research_entries_are_validated(research: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _settings(**research)


def test_a_research_peer_and_a_pipelines_research_must_exist() -> None:
    with pytest.raises(ValidationError, match="unknown peer 'NOPE'"):
        Settings.model_validate({"research": [{"name": "c", "peer": "NOPE"}]})
    pipeline = {"name": "p", "model": "m", "outputs": ["research"], "research": "missing"}
    with pytest.raises(ValidationError, match="no research entry named 'missing'"):
        Settings.model_validate({"pipelines": [pipeline]})
    with pytest.raises(ValidationError, match="go together"):
        Settings.model_validate({"pipelines": [{**pipeline, "research": None}]})


def test_the_research_output_is_one_outbox_item_per_series() -> None:
    settings = Settings.model_validate({
        "research": [{"name": "cohort", "path": "/tmp/c"}],
        "pipelines": [{"name": "p", "model": "m", "outputs": ["sr", "research"],
                       "research": "cohort"},
                      {"name": "q", "model": "m"}]})
    (item,) = research_exports(settings.pipelines[0], "1.2.3")
    assert (item.destination, item.sop_instance_uid, item.kind) == (
        "research:cohort", "1.2.3", RESEARCH_KIND)
    assert research_exports(settings.pipelines[1], "1.2.3") == []
    assert settings.research_destination(item.destination) is settings.research[0]


def test_the_key_comes_from_its_file_or_the_environment_and_must_be_long(tmp_path: Path
                                                                         ) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("0123456789abcdef\n")
    assert load_key(key_file, {}) == b"0123456789abcdef"
    assert load_key(None, {"AINODE_DEID_KEY": "x" * 20}) == b"x" * 20
    with pytest.raises(KeyMissing, match="AINODE_DEID_KEY"):
        load_key(None, {})
    with pytest.raises(KeyMissing, match="shorter than 16"):
        load_key(None, {"AINODE_DEID_KEY": "short"})
    with pytest.raises(KeyMissing, match="cannot read"):
        load_key(tmp_path / "missing", {})
