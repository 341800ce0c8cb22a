"""A bundle's inference config -> the node's model contract (see node/infer/repository.py).

Each transform of ``preprocessing`` and ``postprocessing`` and the ``inferer`` is read with
references resolved (``ConfigParser.get_parsed_content(..., instantiate=False)``) and mapped to
what the node's runner does with the same MONAI class and arguments. Anything the node cannot
reproduce (a transform or option it does not know, a key other than the image, a multi-channel
input) is collected as a reason: the import is refused with all of them, never silently changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from node.bundles.source import Bundle

# MONAI dictionary transform (class name) -> node transform and the arguments passed through.
_PREPROCESS: dict[str, tuple[str, frozenset[str]]] = {
    "Orientationd": ("Orientation", frozenset({"axcodes", "as_closest_canonical", "labels"})),
    "Spacingd": ("Spacing", frozenset({"pixdim", "diagonal", "mode", "padding_mode",
                                       "align_corners", "dtype", "scale_extent",
                                       "recompute_affine", "min_pixdim", "max_pixdim"})),
    "ScaleIntensityRanged": ("ScaleIntensityRange",
                             frozenset({"a_min", "a_max", "b_min", "b_max", "clip"})),
    "NormalizeIntensityd": ("NormalizeIntensity",
                            frozenset({"subtrahend", "divisor", "nonzero", "channel_wise"})),
    "ScaleIntensityd": ("ScaleIntensity", frozenset({"minv", "maxv", "factor", "channel_wise"})),
    "CropForegroundd": ("CropForeground", frozenset({"margin", "allow_smaller", "k_divisible",
                                                     "mode"})),
    "DivisiblePadd": ("DivisiblePad", frozenset({"k", "mode", "method"})),
    "SpatialPadd": ("SpatialPad", frozenset({"spatial_size", "mode", "method"})),
}
# Transforms the node performs itself (reading DICOM, a channel axis, tensor types).
_HANDLED = {"LoadImaged", "EnsureChannelFirstd", "EnsureTyped", "EnsureType", "ToTensord",
            "CastToTyped"}
_POSTPROCESS_SKIP = {"SaveImaged", "EnsureTyped", "ToTensord", "CopyItemsd"}
# Arguments of dictionary transforms that only concern the data dictionary.
_DICT_ONLY = {"_target_", "_disabled_", "_requires_", "_desc_", "_mode_", "keys",
              "allow_missing_keys", "meta_keys", "meta_key_postfix", "lazy", "dtype_key"}
_SLIDING = {"roi_size", "sw_batch_size", "overlap", "mode", "sigma_scale", "padding_mode",
            "cval"}
_SLIDING_PERFORMANCE_ONLY = {"_target_", "sw_device", "device", "progress",
                             "cache_roi_weight_map", "cpu_thresh", "buffer_steps", "buffer_dim"}


@dataclass
class Contract:
    """What the node needs to run the bundle's network as the bundle does."""

    image_key: str
    input_channels: int
    spatial_dims: int
    labels: list[str]
    output_format: str
    output_kind: str = "probabilities"  # or "labels": one channel of label values
    preprocess: list[dict[str, Any]] = field(default_factory=list)
    sliding_window: dict[str, Any] | None = None
    activation: str = "none"
    invert: str = "probabilities"
    postprocess: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the node does differently, and why


def _class_name(config: dict[str, Any]) -> str:
    return str(config.get("_target_", "?")).rsplit(".", 1)[-1]


def _resolved(bundle: Bundle, key: str, reasons: list[str]) -> dict[str, Any] | None:
    try:
        item = bundle.parser.get_parsed_content(key, instantiate=False)
    except Exception as exc:  # a bundle's expressions may fail in many ways
        reasons.append(f"{key} cannot be resolved: {exc}"[:300])
        return None
    config = item.get_config() if hasattr(item, "get_config") else item
    return dict(config) if isinstance(config, dict) else None


def _keys(config: dict[str, Any]) -> list[str]:
    keys = config.get("keys", [])
    return [keys] if isinstance(keys, str) else [str(k) for k in keys]


def _transforms(bundle: Bundle, section: str, reasons: list[str]) -> list[dict[str, Any]]:
    if not bundle.has(section):
        reasons.append(f"the inference config has no {section!r}")
        return []
    raw = bundle.parser[section]
    if not isinstance(raw, dict) or _class_name(raw) != "Compose":
        reasons.append(f"{section} is not a Compose of transforms")
        return []
    found = []
    for index in range(len(raw.get("transforms", []))):
        config = _resolved(bundle, f"{section}#transforms#{index}", reasons)
        if config is not None and not config.get("_disabled_"):
            found.append(config)
    return found


def _outputs(bundle: Bundle, reasons: list[str]) -> tuple[str, dict[str, Any]]:
    formats = bundle.metadata.get("network_data_format", {})
    inputs, outputs = formats.get("inputs", {}), formats.get("outputs", {})
    if len(inputs) != 1 or len(outputs) != 1:
        reasons.append("metadata.json network_data_format must have one input and one output")
        return "image", {}
    return next(iter(inputs)), next(iter(outputs.values()))


SEGMENTATION_FORMATS = ("segmentation", "labels")  # the metadata schema's label outputs
BACKGROUND_NAMES = frozenset({"background", "bg", "backgrounds", "other", "none", "_background_"})


def _labels(output: dict[str, Any], reasons: list[str]) -> tuple[list[str], str]:
    """The label names (index = label value) and the output kind the node reads them with:
    ``probabilities`` (one channel per label, 0 the background: argmax) or ``labels`` (one
    channel whose values are the labels). Every form the MONAI bundle metadata schema allows
    for a segmentation output is one of these, or a reason says what is missing."""
    channels = output.get("channel_def")
    if not isinstance(channels, dict) or not channels:
        reasons.append("network_data_format output has no channel_def: name each label "
                       "(channel or value -> name), 0 the background")
        return [], "probabilities"
    try:
        by_index = {int(k): str(v) for k, v in channels.items()}
    except (TypeError, ValueError):
        reasons.append("network_data_format output channel_def keys are not channel numbers "
                       f"or label values: {', '.join(map(str, channels))}")
        return [], "probabilities"
    count = int(output.get("num_channels", len(by_index)) or len(by_index))
    kind = "labels" if count == 1 and len(by_index) > 1 else "probabilities"
    what = "label values" if kind == "labels" else "channels"
    if sorted(by_index) != list(range(len(by_index))) or len(by_index) < 2:
        reasons.append(f"network_data_format output channel_def must name {what} 0..N-1 "
                       f"(0 the background); it names {', '.join(map(str, sorted(by_index)))}")
        return [], kind
    if kind == "probabilities" and count != len(by_index):
        reasons.append(f"network_data_format output has num_channels {count} but channel_def "
                       f"names {len(by_index)}")
        return [], kind
    return [by_index[i] for i in range(len(by_index))], kind


def map_preprocessing(bundle: Bundle, image_key: str, contract: Contract,
                      reasons: list[str]) -> None:
    for config in _transforms(bundle, "preprocessing", reasons):
        name = _class_name(config)
        keys = _keys(config)
        if name in _HANDLED:
            if name == "EnsureChannelFirstd" and config.get("channel_dim") not in (
                None, "no_channel"
            ):
                reasons.append(
                    f"EnsureChannelFirstd(channel_dim={config['channel_dim']}): the input is a "
                    "multi-channel (e.g. RGB) image; the node gives the model one grey channel")
            if name == "LoadImaged" and config.get("reader") not in (None, "ITKReader",
                                                                    "PydicomReader"):
                contract.notes.append(f"LoadImaged(reader={config.get('reader')}) replaced by "
                                      "the node's own DICOM reader")
            continue
        if name not in _PREPROCESS:
            reasons.append(f"preprocessing transform {name} is not one the node can reproduce "
                           f"(known: {', '.join(sorted(_PREPROCESS))})")
            continue
        if keys != [image_key]:
            reasons.append(f"{name} acts on keys {keys}; the node has only the image "
                           f"{image_key!r}")
            continue
        node_name, allowed = _PREPROCESS[name]
        options = {k: v for k, v in config.items() if k not in _DICT_ONLY}
        if name == "CropForegroundd":
            if config.get("source_key") != image_key or "select_fn" in config:
                reasons.append("CropForegroundd with a source other than the image or a custom "
                               "select_fn")
                continue
            options.pop("source_key", None)
        unknown = sorted(set(options) - allowed)
        if unknown:
            reasons.append(f"{name} option(s) {', '.join(unknown)} are not supported")
            continue
        if "dtype" in options:
            reasons.append(f"{name}(dtype=...) is not supported")
            continue
        contract.preprocess.append({"transform": node_name, **options})


def map_inferer(bundle: Bundle, contract: Contract, reasons: list[str]) -> None:
    config = _resolved(bundle, "inferer", reasons) if bundle.has("inferer") else None
    if config is None:
        reasons.append("the inference config has no 'inferer'")
        return
    name = _class_name(config)
    if name == "SimpleInferer":
        return
    if name != "SlidingWindowInferer":
        reasons.append(f"inferer {name} is not supported (SimpleInferer, SlidingWindowInferer)")
        return
    unknown = sorted(set(config) - _SLIDING - _SLIDING_PERFORMANCE_ONLY)
    if unknown:
        reasons.append(f"SlidingWindowInferer option(s) {', '.join(unknown)} are not supported")
        return
    window = {k: v for k, v in config.items() if k in _SLIDING}
    window.setdefault("mode", "constant")  # MONAI's default (the node's own default differs)
    window.setdefault("overlap", 0.25)
    window.setdefault("sw_batch_size", 1)
    roi = window["roi_size"]
    window["roi_size"] = [int(roi)] * contract.spatial_dims if isinstance(roi, int) else roi
    contract.sliding_window = window


def map_postprocessing(bundle: Bundle, pred_key: str, contract: Contract,
                       reasons: list[str]) -> None:
    argmax_seen = inverted = False
    for config in _transforms(bundle, "postprocessing", reasons):
        name = _class_name(config)
        if name in _POSTPROCESS_SKIP:
            continue
        if pred_key not in _keys(config) and name != "Invertd":
            reasons.append(f"postprocessing {name} acts on {_keys(config)}, not the prediction")
            continue
        if name == "Activationsd":
            if config.get("softmax"):
                contract.activation = "softmax"
            elif config.get("sigmoid"):
                contract.activation = "sigmoid"
            if config.get("other"):
                reasons.append("Activationsd(other=...) is not supported")
        elif name == "Invertd":
            inverted = True
            if config.get("nearest_interp", True) or argmax_seen:
                contract.invert = "labels"  # nearest neighbour: argmax commutes with it
            else:
                contract.invert = "probabilities"
        elif name == "AsDiscreted":
            if not config.get("argmax") and config.get("threshold") is not None:
                continue  # independent masks: named once, below
            if not config.get("argmax") or config.get("threshold") is not None \
                    or config.get("to_onehot"):
                reasons.append("AsDiscreted other than argmax (threshold, one-hot) is not "
                               "supported")
            argmax_seen = True
        elif name == "KeepLargestConnectedComponentd":
            options = {k: v for k, v in config.items() if k not in _DICT_ONLY}
            contract.postprocess.append({"transform": "KeepLargestConnectedComponent",
                                         **options})
        else:
            reasons.append(f"postprocessing transform {name} is not one the node can reproduce")
    if contract.output_kind == "labels":
        if argmax_seen:
            reasons.append("postprocessing takes the argmax of a one-channel output (its "
                           "label values): the bundle's own result would be all background")
    elif not argmax_seen:
        independent = (contract.activation == "sigmoid" or (
            bool(contract.labels) and contract.labels[0].lower() not in BACKGROUND_NAMES))
        if independent:
            reasons.append(
                f"the output's {len(contract.labels)} channels ({', '.join(contract.labels)}) "
                "are independent masks (sigmoid or threshold, no background channel): they may "
                "overlap, and the node needs one label per voxel (softmax channels with "
                "AsDiscreted(argmax=True), or one channel of label values)")
        else:
            reasons.append("postprocessing has no AsDiscreted(argmax=True): the node needs one "
                           "label per voxel")
    if not inverted and contract.preprocess:
        contract.notes.append("the bundle keeps its prediction on the resampled grid; the node "
                              "maps it back to the source grid (Invertd) for SEG")


def map_bundle(bundle: Bundle) -> tuple[Contract, list[str]]:
    """The contract, and every reason the bundle cannot be reproduced (empty when it can)."""
    reasons: list[str] = []
    image_key, output = _outputs(bundle, reasons)
    if bundle.has("image_key"):
        image_key = str(bundle.parser["image_key"])
    inputs = bundle.metadata.get("network_data_format", {}).get("inputs", {})
    input_spec: dict[str, Any] = inputs.get(image_key) or next(iter(inputs.values()), {})
    channels = int(input_spec.get("num_channels", 1))
    spatial_shape = input_spec.get("spatial_shape", [])
    output_format = str(output.get("format", ""))
    output_shape = output.get("spatial_shape")
    per_voxel = not output_shape or not spatial_shape or output_shape == spatial_shape
    if output_format in SEGMENTATION_FORMATS and not per_voxel:
        reasons.append(f"output format {output_format!r} with spatial_shape {output_shape} (the "
                       f"input's {spatial_shape}): not a label per voxel; only segmentation "
                       "bundles are imported")
    labels, output_kind = (_labels(output, reasons)
                           if output_format in SEGMENTATION_FORMATS and per_voxel
                           else ([], "probabilities"))
    contract = Contract(
        image_key=image_key, input_channels=channels,
        spatial_dims=len(spatial_shape) if spatial_shape else 3,
        labels=labels, output_format=output_format, output_kind=output_kind,
    )
    if channels != 1:
        reasons.append(f"the network takes {channels} input channels; the node gives it one")
    if output_format not in SEGMENTATION_FORMATS:
        reasons.append(f"output format {output_format!r}: only segmentation bundles are "
                       f"imported (format {' or '.join(SEGMENTATION_FORMATS)}: a label per "
                       "voxel)")
    map_preprocessing(bundle, image_key, contract, reasons)
    map_inferer(bundle, contract, reasons)
    map_postprocessing(bundle, "pred", contract, reasons)
    return contract, reasons
