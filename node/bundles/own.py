"""``ainode models add``: a network that is not a bundle (a hospital's own TorchScript or ONNX
file) becomes a repository entry from a short contract file (YAML): what the network expects
(layout, orientation, spacing or a fixed size, intensity transforms), what it outputs, and what
each label means. The file is copied as it is (no export); it is run once on an example input
before anything is written, and refused with every reason when it does not fit its contract."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from node.bundles.export import PLATFORMS, TRITON_TYPES, exported_output, model_config
from node.bundles.importer import segments_for, target_reasons
from node.bundles.mapping import Contract
from node.bundles.source import BundleRefused
from node.infer.gpu_config import gpu_variant, gpu_variant_path
from node.infer.repository import ModelConfigError, ModelSpec, load_model_spec
from node.settings import SegmentSpec

INTENSITY = ("NormalizeIntensity", "ScaleIntensity", "ScaleIntensityRange")  # MONAI, by name


class ModelContract(BaseModel):
    """The contract file (see the README's *Your own network*)."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, description="the network's version, named in results")
    description: str = Field("", description="intended use, as its makers state it")
    input_kind: str | None = None
    channels: int = Field(1, ge=1, le=1)  # the node gives one image channel
    spatial_dims: Literal[2, 3] = 3
    layout: Literal["ras", "kji"] = "ras"
    orientation: str | None = Field(None, pattern=r"^[LRAPSI]{2,3}$")
    spacing: list[float] | None = Field(None, min_length=2, max_length=3)
    size: list[int] | None = Field(None, min_length=2, max_length=3)
    intensity: list[dict[str, Any]] = Field(default_factory=list)
    output_kind: Literal["labels", "probabilities", "classification", "heatmap"] = \
        "probabilities"
    activation: Literal["none", "softmax", "sigmoid"] = "none"
    labels: list[str] = Field(min_length=1)
    segments: dict[str, SegmentSpec] = Field(default_factory=dict)
    sliding_window: dict[str, Any] | None = None
    postprocess: list[dict[str, Any]] = Field(default_factory=list)
    threshold: float = Field(0.5, ge=0, le=1)
    min_finding_ml: float = Field(0.0, ge=0)


@dataclass
class AddReport:
    spec: ModelSpec
    output_shape: tuple[int, ...]


def read_contract(path: Path) -> ModelContract:
    try:
        raw = yaml.safe_load(path.read_text())
        return ModelContract.model_validate(raw or {})
    except (OSError, yaml.YAMLError) as exc:
        raise BundleRefused(path.name, [f"cannot read the contract: {exc}"[:300]]) from exc
    except ValidationError as exc:
        raise BundleRefused(path.name, [
            f"{'.'.join(str(p) for p in e['loc']) or 'contract'}: {e['msg']}"
            for e in exc.errors()]) from exc


def _preprocess(contract: ModelContract, reasons: list[str]) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    if contract.orientation:
        steps.append({"transform": "Orientation", "axcodes": contract.orientation})
    if contract.spacing:
        steps.append({"transform": "Spacing", "pixdim": contract.spacing, "mode": "bilinear"})
    if contract.size:
        steps.append({"transform": "Resize", "spatial_size": contract.size, "mode": "trilinear"
                      if contract.spatial_dims == 3 else "bilinear"})
    for index, step in enumerate(contract.intensity):
        if step.get("transform") not in INTENSITY:
            reasons.append(f"intensity[{index}].transform must be one of {', '.join(INTENSITY)}")
        steps.append(dict(step))
    return steps


def _example(contract: ModelContract) -> torch.Tensor:
    spatial = contract.size or (contract.sliding_window or {}).get("roi_size") \
        or [64] * contract.spatial_dims
    generator = torch.Generator().manual_seed(0)
    return torch.rand((1, contract.channels, *[int(s) for s in spatial]), generator=generator)


def _expected_channels(contract: ModelContract) -> int:
    return 1 if contract.output_kind == "labels" else len(contract.labels)


def add_model(name: str, network_file: Path, fmt: str, contract_file: Path, repository: Path,
              replace: bool = False) -> AddReport:
    """Write ``<repository>/<name>/`` for ``network_file`` or raise :class:`BundleRefused`."""
    contract = read_contract(contract_file)
    reasons = target_reasons(name, repository, replace)
    target = repository / name
    if not network_file.is_file():
        reasons.append(f"{network_file} is not a file")
    preprocess = _preprocess(contract, reasons)
    given = {label: {"category": list(s.category.model_dump().values()),
                     "type": list(s.type.model_dump().values()), "color": list(s.color)}
             for label, s in contract.segments.items()}
    findings_only = contract.output_kind in ("classification", "heatmap")
    segments = segments_for(["", *contract.labels] if findings_only else contract.labels,
                            given, reasons)
    if reasons:
        raise BundleRefused(network_file.name, reasons)
    shape_contract = Contract(
        image_key="image", input_channels=contract.channels, spatial_dims=contract.spatial_dims,
        labels=contract.labels, output_format="", output_kind=contract.output_kind,
        preprocess=preprocess, sliding_window=contract.sliding_window,
        activation=contract.activation,
        invert="labels" if contract.output_kind == "labels" else "probabilities",
        postprocess=contract.postprocess)
    platform, filename = PLATFORMS[fmt]
    parameters: dict[str, Any] = {
        "ainode_version": contract.version, "ainode_output_kind": contract.output_kind,
        "ainode_labels": contract.labels, "ainode_segments": segments,
        "ainode_layout": contract.layout, "ainode_preprocess": preprocess,
        "ainode_activation": contract.activation, "ainode_invert": shape_contract.invert,
        "ainode_postprocess": contract.postprocess, "ainode_threshold": str(contract.threshold),
        "ainode_min_finding_ml": str(contract.min_finding_ml),
        "ainode_source": {"added_from": network_file.name, "format": fmt,
                          "intended_use": contract.description},
    }
    if contract.input_kind:
        parameters["ainode_input_kind"] = contract.input_kind
    if contract.sliding_window:
        parameters["ainode_sliding_window"] = contract.sliding_window
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repository))
    try:
        (staging / "1").mkdir()
        shutil.copyfile(network_file, staging / "1" / filename)
        example = _example(contract)
        try:
            output = np.asarray(exported_output(staging / "1" / filename, fmt, example))
        except Exception as exc:  # a file that does not load or run: its own message
            raise BundleRefused(network_file.name, [
                f"the {fmt} file does not run on a {tuple(example.shape)} input: {exc}"[:400]
            ]) from exc
        wanted = _expected_channels(contract)
        channels = output.shape[1] if output.ndim >= 2 else -1
        if channels != wanted:
            raise BundleRefused(network_file.name, [
                f"it outputs {tuple(output.shape)}: {wanted} channel(s) expected for "
                f"{contract.output_kind} with labels {contract.labels}"])
        if output.dtype.name not in TRITON_TYPES:
            raise BundleRefused(network_file.name, [f"its output type {output.dtype} is not one"
                                                    f" of {', '.join(TRITON_TYPES)}"])
        names = _tensor_names(staging / "1" / filename, fmt)
        text = model_config(name, fmt, shape_contract, parameters, names, output.dtype.name)
        header = (f"# {name}: added by `ainode models add` from {network_file.name} "
                  f"({platform}); contract.yaml is the contract it was added with.\n"
                  f"# Intended use (as its makers state it): "
                  f"{contract.description or 'not stated'}\n")
        (staging / "config.pbtxt").write_text(header + text)
        gpu = gpu_variant_path(staging)
        gpu.parent.mkdir()
        gpu.write_text(gpu_variant(header + text))
        shutil.copyfile(contract_file, staging / "contract.yaml")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        spec = load_model_spec(repository, name)
    except ModelConfigError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise BundleRefused(network_file.name, [str(exc)]) from exc
    return AddReport(spec=spec, output_shape=tuple(int(n) for n in output.shape))


def _tensor_names(path: Path, fmt: str) -> tuple[str, str]:
    """An ONNX file's own input and output names; TorchScript's are positional (libtorch's
    ``INPUT__0`` / ``OUTPUT__0``)."""
    if fmt != "onnx":
        return "INPUT__0", "OUTPUT__0"
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise BundleRefused(path.name, [f"the node runs networks with one input and one output;"
                                        f" this has {len(inputs)} and {len(outputs)}"])
    return inputs[0].name, outputs[0].name
