"""`ainode models add`: a network that is not a bundle, added with the README's contract, runs
the same on both backends; and every TorchScript model of model_repository/ gives the same
output embedded and on a real tritonserver."""

from __future__ import annotations

import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from node.imaging.volume import Volume, load_series
from node.infer.embedded import EmbeddedBackend, torchscript_api
from node.infer.repository import load_model_spec, model_names
from node.infer.runner import run_model
from node.infer.triton import TritonBackend
from tests.support.environment import ROOT, ct_files, free_port
from tests.support.triton import TritonProcess

pytestmark = pytest.mark.integration
AINODE = str(Path(sys.executable).parent / "ainode")
MAX_DIFFERENCE = 1e-5


class Window(torch.nn.Module):
    """A stand-in for a hospital's spleen network: scores from the scaled intensity (soft tissue
    above the window's middle is "spleen"), two channels."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        smooth = torch.nn.functional.avg_pool3d(image, 3, stride=1, padding=1)
        return torch.cat([0.5 - smooth, smooth - 0.5], dim=1) * 8.0


def readme_example() -> tuple[str, list[str]]:
    """The README's contract file and `ainode models add` command, as written there."""
    text = (ROOT / "README.md").read_text()
    section = text.split("**Your own network**", 1)[1].split("**Models in stages.**", 1)[0]
    contract = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    command = section.split("```bash\n", 1)[1].split("```", 1)[0].strip()
    return contract, shlex.split(command)


def ainode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AINODE, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A configuration, its (empty) repository, and the network as TorchScript and ONNX."""
    base = tmp_path_factory.mktemp("own-network")
    repository = base / "model_repository"
    config = base / "node.yaml"
    config.write_text(yaml.safe_dump({"inference": {"model_repository": str(repository)}}))
    example = torch.rand(1, 1, 32, 32, 32)
    with torchscript_api():
        torch.jit.save(torch.jit.trace(Window().eval(), example), str(base / "spleen.ts"))
    with warnings.catch_warnings():  # the TorchScript-based exporter, as the node's own
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(Window().eval(), (example,), str(base / "spleen.onnx"),
                          input_names=["ct"], output_names=["scores"], opset_version=17,
                          dynamic_axes={"ct": {2: "x", 3: "y", 4: "z"},
                                        "scores": {2: "x", 3: "y", 4: "z"}}, dynamo=False)
    return base, repository, config


def add(site: tuple[Path, Path, Path], contract_text: str, *extra: str,
        name: str = "my_spleen") -> subprocess.CompletedProcess[str]:
    base, _repository, config = site
    _, command = readme_example()
    assert command[:3] == ["ainode", "models", "add"], command
    (base / "contract.yaml").write_text(contract_text)
    args = [name if a == "my_spleen" else a for a in command[3:]]
    args = [str(base / Path(a).name) if a.startswith("./") else a for a in args]
    args = [str(config) if a == "config/node.yaml" else a for a in args]
    if extra:  # another file format: replace --torchscript FILE
        index = args.index("--torchscript")
        args[index:index + 2] = list(extra)
    return ainode("models", "add", *args)


@pytest.fixture(scope="module")
def ct_part() -> Volume:
    from dataclasses import replace

    volume = load_series(ct_files())
    affine = volume.affine.copy()
    affine[:3, 3] += 50 * affine[:3, 2]
    return replace(volume, voxels=volume.voxels[50:90], affine=affine,
                   slices=volume.slices[50:90], headers=volume.headers[50:90])


def test_the_readme_contract_adds_a_network_that_runs_the_same_on_both_backends(
    site: tuple[Path, Path, Path], ct_part: Volume, tmp_path: Path,
) -> None:
    base, repository, _config = site
    contract, _ = readme_example()
    result = add(site, contract)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "added my_spleen version 2.1.0 (pytorch_libtorch)" in result.stdout
    assert "findings: spleen" in result.stdout
    spec = load_model_spec(repository, "my_spleen")
    assert spec.model_file.read_bytes() == (base / "spleen.ts").read_bytes()
    assert [t["transform"] for t in spec.preprocess] == [
        "Orientation", "Spacing", "ScaleIntensityRange"]
    assert spec.segments["spleen"]["type"] == ["SCT", "78961009", "Spleen"]
    assert (repository / "my_spleen" / "contract.yaml").read_text() == contract
    onnx = add(site, contract, "--onnx", str(base / "spleen.onnx"), name="my_spleen_onnx")
    assert onnx.returncode == 0, onnx.stdout + onnx.stderr
    onnx_spec = load_model_spec(repository, "my_spleen_onnx")
    assert [t.name for t in onnx_spec.inputs] == ["ct"]  # the file's own tensor names

    server = TritonProcess(tmp_path / "triton", free_port(), free_port(), repository)
    server.up()
    embedded, triton = EmbeddedBackend(), TritonBackend(server.grpc_url)
    try:
        tensor = np.random.default_rng(0).random((1, 1, 40, 48, 56), dtype=np.float32)
        outputs = [backend.infer(spec, tensor) for backend in (embedded, triton)]
        assert float(np.abs(outputs[0] - outputs[1]).max()) <= MAX_DIFFERENCE
        labels = {name: run_model(ct_part, model, backend)
                  for name, model, backend in (("embedded", spec, embedded),
                                               ("triton", spec, triton),
                                               ("onnx", onnx_spec, embedded))}
    finally:
        triton.close()
        server.crash()
    share = float(labels["embedded"].mean())
    assert 0.01 < share < 0.9, share  # the window finds tissue, not everything or nothing
    assert np.array_equal(labels["embedded"], labels["triton"])
    assert np.array_equal(labels["embedded"], labels["onnx"])


def test_a_network_that_does_not_fit_its_contract_is_refused_with_every_reason(
    site: tuple[Path, Path, Path],
) -> None:
    _base, repository, _config = site
    contract, _ = readme_example()
    wrong = yaml.safe_load(contract)
    wrong["labels"] = ["background", "spleen", "tumour of the left ear"]
    wrong["intensity"].append({"transform": "GaussianSmooth"})
    result = add(site, yaml.safe_dump(wrong), name="wrong_spleen")
    assert result.returncode == 1
    assert "no SEG/SR codes for label(s) tumour of the left ear" in result.stderr
    assert "intensity[1].transform must be one of" in result.stderr
    wrong["labels"] = ["background", "spleen", "liver"]  # known codes, but 2 channels come out
    wrong["intensity"].pop()
    result = add(site, yaml.safe_dump(wrong), name="wrong_spleen")
    assert result.returncode == 1
    assert "3 channel(s) expected" in result.stderr, result.stderr
    assert not (repository / "wrong_spleen").exists()
    assert not [p for p in repository.iterdir() if p.name.startswith(".")]


def test_every_torchscript_model_of_the_repository_agrees_on_both_backends(
    triton_grpc_url: str,
) -> None:
    repository = ROOT / "model_repository"
    specs = [load_model_spec(repository, name) for name in model_names(repository)]
    torchscript = [s for s in specs if s.platform == "pytorch_libtorch"]
    assert {s.name for s in torchscript} >= {"mr_brain_extraction_bbox",
                                             "mr_brain_extraction_mask"}
    embedded, triton = EmbeddedBackend(), TritonBackend(triton_grpc_url)
    generator = np.random.default_rng(1)
    try:
        for spec in torchscript:
            triton.check(spec)
            shape = [d if d > 0 else 32 for d in spec.inputs[0].dims]
            tensor = generator.random(shape, dtype=np.float32)
            here, there = embedded.infer(spec, tensor), triton.infer(spec, tensor)
            assert here.shape == there.shape
            assert float(np.abs(here - there).max()) <= MAX_DIFFERENCE, spec.name
            assert np.array_equal(here.argmax(1), there.argmax(1)), spec.name
    finally:
        embedded.close()
        triton.close()
