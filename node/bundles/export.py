"""Build the bundle's network, load its weights, export it and write the model directory.

The network is ``network_def`` instantiated by MONAI's ``ConfigParser``; the weights are
``models/model.pt`` (a state dict, or a checkpoint dict holding one under ``model``, as the
bundle's ``CheckpointLoader`` accepts) or ``models/model.ts`` (TorchScript). The export is ONNX
(``onnxruntime_onnx``) or TorchScript (``pytorch_libtorch``); it is checked against the network
on a random input before anything is written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from node.bundles.mapping import Contract
from node.bundles.source import Bundle
from node.infer.embedded import torchscript_api
from node.infer.gpu_config import gpu_variant, gpu_variant_path

EXPORT_TOLERANCE = 1e-3  # max |exported - network| on the check input, relative to its range
PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"),
             "torchscript": ("pytorch_libtorch", "model.pt")}


def checkpoint_path(bundle: Bundle) -> Path:
    """Where the bundle's own ``checkpointloader`` loads from (it may depend on the bundle's
    settings, e.g. a low-resolution model), else ``models/model.pt``."""
    if bundle.has("checkpointloader"):
        try:
            found = bundle.parser.get_parsed_content("checkpointloader#load_path")
            return Path(str(found))
        except Exception:  # noqa: S110 - an expression we cannot evaluate: the default path
            pass
    return bundle.root / "models" / "model.pt"


def distributed_torchscript(bundle: Bundle) -> Path | None:
    """The bundle's own TorchScript network (``models/model.ts``, as the Model Zoo ships it
    beside ``models/model.pt``), unless the bundle's settings load another checkpoint (a
    low-resolution variant, say) that the TorchScript file is not."""
    weights_ts = bundle.root / "models" / "model.ts"
    if not weights_ts.is_file():
        return None
    checkpoint = checkpoint_path(bundle)
    default = bundle.root / "models" / "model.pt"
    same = checkpoint.resolve() == default.resolve()
    return weights_ts if same or not checkpoint.is_file() else None


def build_network(bundle: Bundle, reasons: list[str]) -> torch.nn.Module | None:
    """``network_def`` with the bundle's weights, in eval mode (or None with reasons)."""
    weights_ts = distributed_torchscript(bundle)
    weights_pt = checkpoint_path(bundle)
    if weights_ts is not None:
        with torchscript_api():
            module: torch.nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(weights_ts), map_location="cpu")
            return module.eval()
    if not weights_pt.is_file():
        shown = weights_pt.relative_to(bundle.root) if weights_pt.is_relative_to(bundle.root) \
            else weights_pt
        reasons.append(f"no weights: {shown} (or models/model.ts) is missing")
        return None
    if not bundle.has("network_def"):
        reasons.append("the inference config has no network_def")
        return None
    definition = bundle.parser["network_def"]
    if isinstance(definition, dict) and definition.get("pretrained") is True:
        # the bundle's checkpoint replaces every weight; do not download ImageNet weights
        bundle.parser["network_def#pretrained"] = False
    try:
        network = bundle.parser.get_parsed_content("network_def", instantiate=True)
    except Exception as exc:  # instantiating arbitrary bundle code fails in many ways
        reasons.append(f"network_def cannot be built here: {exc}"[:300])
        return None
    if not isinstance(network, torch.nn.Module):
        reasons.append("network_def is not a torch module")
        return None
    try:
        state = torch.load(weights_pt, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle that is not plain tensors is refused, not run
        reasons.append(f"models/model.pt is not a plain state dict: {exc}"[:300])
        return None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        reasons.append(f"models/model.pt does not fit network_def: {exc}"[:300])
        return None
    return network.eval()


def example_input(contract: Contract, bundle: Bundle) -> torch.Tensor:
    spatial = (contract.sliding_window or {}).get("roi_size") or bundle.metadata.get(
        "network_data_format", {}).get("inputs", {}).get(contract.image_key, {}).get(
        "spatial_shape", [64] * contract.spatial_dims)
    generator = torch.Generator().manual_seed(0)
    return torch.rand((1, contract.input_channels, *[int(s) for s in spatial]),
                      generator=generator)


def _export(network: torch.nn.Module, example: torch.Tensor, fmt: str, target: Path,
            spatial_dims: int) -> None:
    if fmt == "torchscript":
        with torchscript_api():
            traced = torch.jit.trace(  # type: ignore[no-untyped-call]
                network, example, check_trace=False)
            torch.jit.save(traced, str(target))
        return
    axes = {0: "batch", **{2 + d: f"d{d}" for d in range(spatial_dims)}}
    torch.onnx.export(network, (example,), str(target), input_names=["image"],
                      output_names=["pred"], dynamic_axes={"image": axes, "pred": axes},
                      opset_version=17, dynamo=False)


def exported_output(target: Path, fmt: str, example: torch.Tensor) -> np.ndarray[Any, Any]:
    if fmt == "torchscript":
        with torch.inference_mode(), torchscript_api():
            loaded = torch.jit.load(str(target))  # type: ignore[no-untyped-call]
            return np.asarray(loaded.eval()(example).numpy())
    import onnxruntime

    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    return np.asarray(output)


TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8",
                "int8": "TYPE_INT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                "bool": "TYPE_BOOL"}


def _tensor(name: str, channels: int, spatial_dims: int, output: bool,
            dtype: str = "float32") -> Any:
    tensor = model_config_pb2.ModelOutput() if output else model_config_pb2.ModelInput()
    tensor.name = name
    tensor.data_type = model_config_pb2.DataType.Value(TRITON_TYPES[dtype])
    tensor.dims.extend([-1, channels, *[-1] * spatial_dims])
    return tensor


def model_config(name: str, fmt: str, contract: Contract, parameters: dict[str, Any],
                 names: tuple[str, str] | None = None, output_dtype: str = "float32") -> str:
    """config.pbtxt for one network; ``names``: its input and output tensors' (default: what
    the export writes). A classifier's output is [N, findings]."""
    platform, _ = PLATFORMS[fmt]
    config: Any = model_config_pb2.ModelConfig()
    config.name = name
    config.platform = platform
    config.max_batch_size = 0
    config.version_policy.latest.num_versions = 1
    input_name, output_name = names or (
        ("image", "pred") if fmt == "onnx" else ("INPUT__0", "OUTPUT__0"))
    config.input.append(_tensor(input_name, contract.input_channels, contract.spatial_dims,
                                output=False))
    config.output.append(_tensor(output_name, 1 if contract.output_kind == "labels"
                                 else len(contract.labels),
                                 0 if contract.output_kind == "classification"
                                 else contract.spatial_dims, output=True,
                                 dtype=output_dtype))
    config.instance_group.add(count=1)
    for key, value in parameters.items():
        config.parameters[key].string_value = value if isinstance(value, str) \
            else json.dumps(value)
    return str(text_format.MessageToString(config))


def write_model(network: torch.nn.Module, example: torch.Tensor, contract: Contract,
                fmt: str, name: str, target_dir: Path, parameters: dict[str, Any],
                header: str, bundle: Bundle) -> float:
    """Export into a temporary directory beside ``target_dir``, check, then move it in place.
    Returns the largest difference between the export and the network on ``example``. A
    TorchScript model from a bundle that ships ``models/model.ts`` is that file, byte for byte
    (no export, nothing lost)."""
    _, filename = PLATFORMS[fmt]
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target_dir.parent))
    try:
        (staging / "1").mkdir()
        shipped = distributed_torchscript(bundle)
        if fmt == "torchscript" and shipped is not None:
            shutil.copyfile(shipped, staging / "1" / filename)
        else:
            _export(network, example, fmt, staging / "1" / filename, contract.spatial_dims)
        with torch.inference_mode():
            expected = network(example).numpy()
        exported = exported_output(staging / "1" / filename, fmt, example)
        scale = max(float(np.abs(expected).max()), 1.0)
        difference = float(np.abs(exported - expected).max()) / scale
        if exported.shape != expected.shape or difference > EXPORT_TOLERANCE:
            raise ValueError(f"the {fmt} export differs from the network "
                             f"(relative difference {difference:.2e})")
        config = header + model_config(name, fmt, contract, parameters)
        (staging / "config.pbtxt").write_text(config)
        gpu = gpu_variant_path(staging)
        gpu.parent.mkdir()
        gpu.write_text(gpu_variant(config))
        provenance = staging / "bundle"
        provenance.mkdir()
        shutil.copy2(bundle.root / "configs" / "metadata.json", provenance / "metadata.json")
        for extra in ("LICENSE", "docs/README.md"):
            if (bundle.root / extra).is_file():
                shutil.copy2(bundle.root / extra, provenance / Path(extra).name)
        if target_dir.exists():
            old = target_dir.with_name(f".{name}.replaced")
            shutil.rmtree(old, ignore_errors=True)
            target_dir.rename(old)
            staging.rename(target_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target_dir)
        return difference
    finally:
        shutil.rmtree(staging, ignore_errors=True)
