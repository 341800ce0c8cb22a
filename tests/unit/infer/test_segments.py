"""Label meanings live in the model; pipelines override; gaps are configuration errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.cli import app
from node.infer.repository import ModelConfigError, load_model_spec
from node.infer.segments import effective_segments, missing_codes
from node.settings import Pipeline, load_settings

ROOT = Path(__file__).resolve().parents[3]
REPOSITORY = ROOT / "model_repository"


@pytest.mark.parametrize("model", sorted(p.parent.name for p in REPOSITORY.glob(
    "*/config.pbtxt")))
def test_every_shipped_model_declares_what_each_label_means(model: str) -> None:
    spec = load_model_spec(REPOSITORY, model)
    meanings = effective_segments(spec, Pipeline(name="p", model=model))  # no overrides
    assert set(meanings) == set(spec.findings)
    for meaning in meanings.values():
        assert meaning.category.scheme in ("SCT", "DCM") and meaning.type.value.isdigit()


def _repository_without(tmp_path: Path, label: str) -> Path:
    """A copy of the repository whose ct_body_seg declares no codes for ``label``."""
    repository = tmp_path / "repository"
    shutil.copytree(REPOSITORY / "ct_body_seg", repository / "ct_body_seg",
                    ignore=shutil.ignore_patterns("*.onnx"))
    (repository / "ct_body_seg" / "1" / "model.onnx").write_bytes(b"")
    config = repository / "ct_body_seg" / "config.pbtxt"
    text = config.read_text()
    match = re.search(r'key: "ainode_segments" value: \{ string_value: "(.*)" \}', text)
    assert match
    meanings = json.loads(match.group(1).replace('\\"', '"'))
    del meanings[label]
    config.write_text(text.replace(match.group(1), json.dumps(meanings).replace('"', '\\"')))
    return repository


def _config(tmp_path: Path, repository: Path, segments: dict[str, object] | None = None) -> Path:
    pipeline = {"name": "ct-body", "model": "ct_body_seg", "outputs": ["seg", "sr"]}
    if segments:
        pipeline["segments"] = segments
    path = tmp_path / "node.yaml"
    path.write_text(json.dumps({"node": {"data_dir": str(tmp_path / "var"), "dicom_port": 1},
                                "inference": {"model_repository": str(repository)},
                                "pipelines": [pipeline]}))
    return path


def test_a_label_without_codes_stops_config_check_and_serve(tmp_path: Path) -> None:
    repository = _repository_without(tmp_path, "gas")
    config = _config(tmp_path, repository)
    (problem,) = missing_codes(load_settings(config, environ={}))
    assert "pipelines.0 (ct-body)" in problem and "ct_body_seg" in problem
    assert "gas" in problem and "body" not in problem.split("label(s)")[1]
    result = CliRunner().invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 2 and "gas" in result.output
    ainode = str(Path(sys.executable).parent / "ainode")
    served = subprocess.run([ainode, "serve", "--config", str(config)], capture_output=True,
                            text=True, timeout=60)
    assert served.returncode == 2, served.stdout + served.stderr
    assert "ct_body_seg" in served.stderr and "gas" in served.stderr
    assert not (tmp_path / "var" / "jobs.sqlite3").exists(), "refused before starting"


def test_a_pipeline_may_supply_or_override_a_label_s_codes(tmp_path: Path) -> None:
    repository = _repository_without(tmp_path, "gas")
    gas = {"category": ["SCT", "91720002", "Body Substance"],
           "type": ["SCT", "74947009", "Gas"], "color": [1, 2, 3]}
    dense = {"category": ["SCT", "91723000", "Anatomical Structure"],
             "type": ["SCT", "272673000", "Bone"], "color": [9, 9, 9]}
    settings = load_settings(_config(tmp_path, repository, {"gas": gas, "dense": dense}),
                             environ={})
    assert missing_codes(settings) == []
    meanings = effective_segments(load_model_spec(repository, "ct_body_seg"),
                                  settings.pipelines[0])
    assert meanings["gas"].color == (1, 2, 3)
    assert meanings["dense"].color == (9, 9, 9)  # the pipeline's override wins
    assert meanings["body"].type.meaning == "Entire body"  # the model's own


def test_invalid_codes_in_a_model_name_the_model_and_label(tmp_path: Path) -> None:
    repository = _repository_without(tmp_path, "gas")
    config = repository / "ct_body_seg" / "config.pbtxt"
    config.write_text(config.read_text().replace('\\"Entire body\\"', '\\"\\"'))
    (problem,) = missing_codes(load_settings(_config(tmp_path, repository), environ={}))
    assert "ct_body_seg: ainode_segments.body.type" in problem
    config.write_text(config.read_text().replace('{\\"body\\"', '{\\"spleen\\"'))
    with pytest.raises(ModelConfigError, match="unknown labels spleen"):
        load_model_spec(repository, "ct_body_seg")


def test_a_classifier_pipeline_asking_for_images_or_a_wrong_rule_is_refused(
    tmp_path: Path,
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(json.dumps({
        "inference": {"model_repository": str(REPOSITORY)},
        "peers": [{"name": "PACS", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
        "pipelines": [
            {"name": "mass", "model": "cxr_mass_cls", "outputs": ["seg", "sr"],
             "destinations": ["PACS"], "urgent_if": [{"label": "mass"}]},
            {"name": "lungs", "model": "cxr_lung_seg", "outputs": ["sr"],
             "destinations": ["PACS"], "urgent_if": [{"finding": "lungs",
                                                      "min_probability": 0.9}]},
        ],
    }))
    problems = missing_codes(load_settings(config))
    assert any("cxr_mass_cls is a classification model" in p and "[sr]" in p
               for p in problems)
    assert any("urgent_if names label 'mass'" in p for p in problems)
    assert any("urgent_if names finding 'lungs'" in p for p in problems)
    result = CliRunner().invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 2


def test_an_urgency_rule_names_a_label_or_a_finding() -> None:
    from pydantic import ValidationError

    from node.settings import UrgencyRule

    with pytest.raises(ValidationError, match="either a label or a finding"):
        UrgencyRule.model_validate({"label": "a", "finding": "b"})
    with pytest.raises(ValidationError, match="min_probability goes with a finding"):
        UrgencyRule.model_validate({"label": "a", "min_probability": 0.5})
