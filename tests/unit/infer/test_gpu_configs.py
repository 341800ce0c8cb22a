"""Each model's GPU variant (configs/gpu.pbtxt, Triton --model-config-name=gpu) is the default
configuration with its instances on the GPU: same tensors, same ainode parameters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

ROOT = Path(__file__).resolve().parents[3]
MODELS = sorted(p.parent for p in (ROOT / "model_repository").glob("*/config.pbtxt"))


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_the_gpu_variants_are_current() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_configs.py"),
                             "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.name)
def test_gpu_variant_names_the_same_tensors_and_runs_on_the_gpu(model: Path) -> None:
    default, gpu = _parse(model / "config.pbtxt"), _parse(model / "configs" / "gpu.pbtxt")
    assert (gpu.name, gpu.platform, gpu.max_batch_size) == (
        default.name, default.platform, default.max_batch_size)
    assert list(gpu.input) == list(default.input) and list(gpu.output) == list(default.output)
    assert dict(gpu.parameters) == dict(default.parameters)
    assert gpu.instance_group and all(
        g.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU for g in gpu.instance_group)
    assert all(g.kind != model_config_pb2.ModelInstanceGroup.KIND_GPU
               for g in default.instance_group), "the default runs anywhere (CPU here)"
