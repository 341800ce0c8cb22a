"""Volume -> model -> label map on the source grid, with the model's declared MONAI transforms.

Pre-processing is the model's ``ainode_preprocess`` list, each item a MONAI array transform
from the allow-list below with its keyword arguments (no code from configuration). The
transforms are invertible; after inference the prediction is mapped back with their inverse,
so the label map has exactly the source volume's shape and voxel order. Models that declare
``ainode_sliding_window`` run through MONAI ``sliding_window_inference`` with the backend as the
predictor; the others get the whole (pre-processed) volume at once.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from monai.data.meta_tensor import MetaTensor
from monai.inferers.utils import sliding_window_inference
from monai.transforms.compose import Compose
from monai.transforms.croppad.array import DivisiblePad, SpatialPad
from monai.transforms.intensity.array import ScaleIntensityRange
from monai.transforms.post.array import RemoveSmallObjects
from numpy.typing import NDArray

from node.imaging.volume import Volume
from node.infer.backend import Backend
from node.infer.repository import ModelConfigError, ModelSpec

# Transforms a model may declare, by name. Pre-processing: invertible or intensity-only.
_ALLOWED = {
    "DivisiblePad": DivisiblePad,
    "SpatialPad": SpatialPad,
    "ScaleIntensityRange": ScaleIntensityRange,
}
# Post-processing, on the label map ([1, ...] integer labels) on the source grid.
_ALLOWED_POST = {"RemoveSmallObjects": RemoveSmallObjects}


@dataclass
class StageTimes:
    """Seconds per stage, for status and benchmarks."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - started
        return now


def _compose(model: ModelSpec, key: str, items: tuple[dict[str, Any], ...],
             allowed: dict[str, Any]) -> Compose:
    transforms = []
    for index, item in enumerate(items):
        spec = dict(item)
        name = spec.pop("transform", None)
        if name not in allowed:
            raise ModelConfigError(
                f"{model.name}: {key}[{index}].transform {name!r} is not one of "
                f"{', '.join(sorted(allowed))}"
            )
        try:
            transforms.append(allowed[name](**spec))
        except TypeError as exc:
            raise ModelConfigError(f"{model.name}: {key}[{index}]: {exc}") from exc
    return Compose(transforms)


def build_preprocess(model: ModelSpec) -> Compose:
    return _compose(model, "ainode_preprocess", model.preprocess, _ALLOWED)


def build_postprocess(model: ModelSpec) -> Compose:
    return _compose(model, "ainode_postprocess", model.postprocess, _ALLOWED_POST)


def labels_from(prediction: NDArray[Any], output_kind: str) -> NDArray[np.uint8]:
    """[C, ...] scores -> label map by a max/compare pass (much faster than argmax on CPU),
    or a [1, ...] label map as is. Ties go to the lower label, as with argmax."""
    if output_kind == "labels":
        return np.asarray(prediction[0], dtype=np.uint8)
    best = prediction[0].copy()
    labels = np.zeros(best.shape, dtype=np.uint8)
    for channel in range(1, prediction.shape[0]):
        better = prediction[channel] > best
        labels[better] = channel
        np.maximum(best, prediction[channel], out=best)
    return labels


def run_model(
    volume: Volume, model: ModelSpec, backend: Backend, times: StageTimes | None = None
) -> NDArray[np.uint8]:
    """The model's label map on the volume's own grid: shape ``volume.voxels.shape``."""
    times = times or StageTimes()
    started = time.perf_counter()
    preprocess = build_preprocess(model)
    image = MetaTensor(torch.from_numpy(volume.voxels)[None], affine=torch.eye(4))
    prepared = preprocess(image)
    started = times.add("preprocess", started)

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(np.asarray(backend.infer(model, array)))

    batch = prepared.as_tensor()[None] if isinstance(prepared, MetaTensor) else prepared[None]
    if model.sliding_window:
        window = model.sliding_window
        output = sliding_window_inference(
            batch, roi_size=window["roi_size"], sw_batch_size=window.get("sw_batch_size", 1),
            predictor=predictor, overlap=window.get("overlap", 0.25), mode="gaussian",
        )
        prediction = output[0] if isinstance(output, torch.Tensor) else output[0][0]
    else:
        prediction = predictor(batch)[0]
    started = times.add("infer", started)

    operations = list(getattr(prepared, "applied_operations", []))
    if operations:  # undo padding/cropping so the prediction lands on the source grid
        restored = MetaTensor(prediction, affine=torch.eye(4), applied_operations=operations)
        prediction = cast(Any, preprocess).inverse(restored)
    array = np.asarray(
        prediction.as_tensor() if isinstance(prediction, MetaTensor) else prediction
    )
    labels = labels_from(array, model.output_kind)
    if model.postprocess:
        with warnings.catch_warnings():  # MONAI 1.6 still passes scikit-image's old min_size
            warnings.filterwarnings("ignore", "Parameter `min_size` is deprecated", FutureWarning)
            cleaned = build_postprocess(model)(torch.from_numpy(labels)[None])
        labels = np.asarray(cleaned.as_tensor() if isinstance(cleaned, MetaTensor) else cleaned,
                            dtype=np.uint8)[0]
    if labels.shape != volume.voxels.shape:
        raise ModelConfigError(
            f"{model.name}: output maps back to {labels.shape}, source is {volume.voxels.shape}"
        )
    times.add("postprocess", started)
    return labels
