"""Models in stages on the embedded backend: ``ainode_stages`` names the networks, the model's
own model.py ``run(image, infer)`` calls them by role (real TorchScript networks, made here)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from node.infer.backend import InferenceFailed
from node.infer.embedded import EmbeddedBackend
from node.infer.repository import ModelConfigError, ModelNotFound, load_model_spec

STAGE = """name: "{name}"
platform: "pytorch_libtorch"
max_batch_size: 0
input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ 1, 1, -1, -1 ] }} ]
output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 1, 1, -1, -1 ] }} ]
"""
STAGED = """name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "image" data_type: TYPE_FP32 dims: [ 1, 1, -1, -1 ] }} ]
output [ {{ name: "labels" data_type: TYPE_UINT8 dims: [ 1, 1, -1, -1 ] }} ]
parameters: {{ key: "ainode_output_kind" value: {{ string_value: "labels" }} }}
parameters: {{ key: "ainode_labels" value: {{ string_value: "[\\"background\\", \\"spot\\"]" }} }}
{stages}"""
# first stage doubles, the crop is where it exceeds 1, the second stage adds 1 to the crop
RUN = """
import numpy as np

def run(image, infer):
    doubled = infer("double", image)
    rows, cols = np.nonzero(doubled[0, 0] > 1)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    out = np.zeros(image.shape, dtype=np.uint8)
    out[0, 0][box] = (infer("plus_one", np.ascontiguousarray(image[0, 0][box])[None, None])
                      [0, 0] > 1.5)
    return out
"""


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class PlusOne(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


def stages_parameter(stages: dict[str, str]) -> str:
    value = json.dumps(json.dumps(stages))
    return f'parameters: {{ key: "ainode_stages" value: {{ string_value: {value} }} }}\n'


def repository(tmp_path: Path, run: str = RUN, stages: dict[str, str] | None = None) -> Path:
    root = tmp_path / "models"
    for name, module in (("double", Double()), ("plus_one", PlusOne())):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(STAGE.format(name=name))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(module, torch.zeros(1, 1, 4, 4))
            torch.jit.save(traced, str(root / name / "1" / "model.pt"))
    (root / "staged" / "1").mkdir(parents=True)
    (root / "staged" / "1" / "model.py").write_text(run)
    parameter = stages_parameter(stages if stages is not None
                                 else {"double": "double", "plus_one": "plus_one"})
    (root / "staged" / "config.pbtxt").write_text(
        STAGED.format(name="staged", stages=parameter if stages != {} else ""))
    return root


def test_a_staged_model_runs_its_networks_by_role(tmp_path: Path) -> None:
    spec = load_model_spec(repository(tmp_path), "staged")
    assert spec.stages == {"double": "double", "plus_one": "plus_one"}
    assert spec.model_file.name == "model.py"
    image = np.zeros((1, 1, 8, 8), dtype=np.float32)
    image[0, 0, 2:4, 3:6] = [[0.6, 0.4, 0.9], [0.7, 0.8, 0.3]]
    backend = EmbeddedBackend()
    backend.check(spec)
    labels = backend.infer(spec, image)
    expected = np.zeros((1, 1, 8, 8), dtype=np.uint8)
    expected[0, 0, 2:4, 3:6] = [[1, 0, 1], [1, 1, 0]]
    assert np.array_equal(labels, expected)


def test_a_python_model_without_stages_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="ainode_stages"):
        load_model_spec(repository(tmp_path, stages={}), "staged")


def test_a_stage_missing_from_the_repository_is_found_by_check(tmp_path: Path) -> None:
    root = repository(tmp_path)
    shutil.rmtree(root / "plus_one")
    with pytest.raises(ModelNotFound, match="plus_one"):
        EmbeddedBackend().check(load_model_spec(root, "staged"))


def test_stage_code_that_fails_or_asks_for_an_unknown_role_is_an_inference_failure(
    tmp_path: Path,
) -> None:
    unknown = RUN.replace('infer("plus_one"', 'infer("triple"')
    spec = load_model_spec(repository(tmp_path / "a", run=unknown), "staged")
    image = np.ones((1, 1, 4, 4), dtype=np.float32)
    with pytest.raises(InferenceFailed, match="no stage 'triple'"):
        EmbeddedBackend().infer(spec, image)
    spec = load_model_spec(repository(tmp_path / "b"), "staged")
    with pytest.raises(InferenceFailed, match="staged"):  # nothing above 1: an empty crop
        EmbeddedBackend().infer(spec, np.zeros((1, 1, 4, 4), dtype=np.float32))


def test_model_py_without_run_is_a_configuration_error(tmp_path: Path) -> None:
    spec = load_model_spec(repository(tmp_path, run="VALUE = 1\n"), "staged")
    with pytest.raises(ModelConfigError, match="has no run"):
        EmbeddedBackend().check(spec)
