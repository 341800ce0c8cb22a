"""Volume -> model -> label map on the source grid, with the model's declared MONAI transforms.

Pre-processing is the model's ``ainode_preprocess`` list, each item a MONAI array transform
from the allow-list below with its keyword arguments (no code from configuration). The spatial
transforms are invertible; after inference the prediction is mapped back with their inverse
(as MONAI ``Invertd`` does), so the label map has exactly the source volume's shape and voxel
order. Models that declare ``ainode_sliding_window`` run through MONAI
``sliding_window_inference`` with the backend as the predictor; the others get the whole
(pre-processed) volume at once. A model in the ``ras`` layout (MONAI bundles) sees the volume as
MONAI's readers present it: [x, y, z] with its RAS affine, so ``Orientation`` and ``Spacing``
act in patient space exactly as in the bundle's own pipeline.
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
from monai.transforms.croppad.array import CropForeground, DivisiblePad, SpatialPad
from monai.transforms.intensity.array import (
    NormalizeIntensity,
    ScaleIntensity,
    ScaleIntensityRange,
)
from monai.transforms.post.array import KeepLargestConnectedComponent, RemoveSmallObjects
from monai.transforms.spatial.array import Orientation, Resize, Spacing
from monai.transforms.utils import convert_applied_interp_mode
from numpy.typing import NDArray
from scipy import ndimage

from node.imaging.volume import Volume
from node.infer.backend import Backend
from node.infer.repository import ModelConfigError, ModelSpec

# Transforms a model may declare, by name. Pre-processing: invertible or intensity-only.
PREPROCESS_TRANSFORMS: dict[str, Any] = {
    "CropForeground": CropForeground,
    "DivisiblePad": DivisiblePad,
    "NormalizeIntensity": NormalizeIntensity,
    "Orientation": Orientation,
    "Resize": Resize,
    "ScaleIntensity": ScaleIntensity,
    "ScaleIntensityRange": ScaleIntensityRange,
    "Spacing": Spacing,
    "SpatialPad": SpatialPad,
}
# Post-processing, on the label map ([1, ...] integer labels) on the source grid.
POSTPROCESS_TRANSFORMS: dict[str, Any] = {
    "KeepLargestConnectedComponent": KeepLargestConnectedComponent,
    "RemoveSmallObjects": RemoveSmallObjects,
}
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
# (patient LPS, DICOM) -> (RAS, MONAI/NIfTI)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# more small objects than this are cleared in one pass over the map, fewer one box at a time
SMALL_OBJECTS_ONE_BY_ONE = 2000


@dataclass
class StageTimes:
    """Seconds per stage, for status and benchmarks. ``backend`` is the time spent in the
    backend's calls alone, a part of ``infer`` (which also holds a sliding window's tiling and
    blending)."""

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
        if name == "Orientation":  # axis codes in MONAI's (RAS) convention, as bundles mean
            spec.setdefault("labels", RAS_LABELS)
        try:
            transforms.append(allowed[name](**spec))
        except TypeError as exc:
            raise ModelConfigError(f"{model.name}: {key}[{index}]: {exc}") from exc
    return Compose(transforms)


def build_preprocess(model: ModelSpec) -> Compose:
    return _compose(model, "ainode_preprocess", model.preprocess, PREPROCESS_TRANSFORMS)


def build_postprocess(model: ModelSpec) -> Compose:
    return _compose(model, "ainode_postprocess", model.postprocess, POSTPROCESS_TRANSFORMS)


def model_input(volume: Volume, layout: str) -> MetaTensor:
    """The volume as the model's first transform receives it: channel first, with an affine."""
    if layout == "ras":  # [x, y, z] = [column, row, slice], affine in RAS
        data = np.ascontiguousarray(volume.voxels.transpose(2, 1, 0))
        return MetaTensor(torch.from_numpy(data)[None],
                          affine=torch.from_numpy(LPS_TO_RAS @ volume.affine))
    return MetaTensor(torch.from_numpy(volume.voxels)[None], affine=torch.eye(4))


def activate(scores: torch.Tensor, activation: str, dim: int = 0) -> torch.Tensor:
    """The model's declared activation over ``dim`` (the classes)."""
    if activation == "softmax":
        return torch.softmax(scores.float(), dim=dim)
    if activation == "sigmoid":
        return torch.sigmoid(scores.float())
    return scores


def labels_from(prediction: NDArray[Any], output_kind: str) -> NDArray[np.uint8]:
    """[C, ...] scores -> label map by a max/compare pass (much faster than argmax on CPU),
    or a [1, ...] label map as is. Ties go to the lower label, as with argmax."""
    if output_kind == "labels":
        return np.asarray(prediction[0], dtype=np.uint8)
    if prediction.shape[0] == 2:  # background and one label: one comparison
        two: NDArray[np.uint8] = np.greater(prediction[1], prediction[0]).view(np.uint8)
        return two
    best = prediction[0].copy()
    labels = np.zeros(best.shape, dtype=np.uint8)
    for channel in range(1, prediction.shape[0]):
        better = prediction[channel] > best
        labels[better] = channel
        np.maximum(best, prediction[channel], out=best)
    return labels


def run_classifier(
    volume: Volume, model: ModelSpec, backend: Backend, times: StageTimes | None = None
) -> dict[str, float]:
    """A classification model's probability per finding for the whole image (or volume)."""
    times = times or StageTimes()
    started = time.perf_counter()
    prepared = build_preprocess(model)(model_input(volume, model.layout))
    tensor = prepared.as_tensor() if isinstance(prepared, MetaTensor) else prepared
    batch = np.ascontiguousarray(np.asarray(tensor, dtype=np.float32)[None])
    started = times.add("preprocess", started)
    scores = torch.from_numpy(np.asarray(backend.infer(model, batch), dtype=np.float32))
    times.add("infer", started)
    if scores.ndim != 2 or scores.shape != (1, len(model.labels)):
        raise ModelConfigError(f"{model.name}: a classifier must output [1, {len(model.labels)}]"
                               f" scores, got {tuple(scores.shape)}")
    probabilities = activate(scores[0], model.activation)
    return {name: round(float(p), 4) for name, p in zip(model.labels, probabilities,
                                                          strict=True)}


def _predict_on_source_grid(
    volume: Volume, model: ModelSpec, backend: Backend, times: StageTimes,
    labels_only: bool = False,
) -> NDArray[Any]:
    """Pre-process, infer (whole, or by sliding window), activate and map back: [C, ...] on
    the volume's own grid (scores or probabilities; [1, ...] labels when inverted as labels).
    With ``labels_only`` the activation is left out where it cannot change the labels: softmax
    and sigmoid keep each voxel's order of classes, so unless probabilities are interpolated
    back to the source grid, the label of the scores is the label of the probabilities."""
    started = time.perf_counter()
    preprocess = build_preprocess(model)
    prepared = preprocess(model_input(volume, model.layout))
    started = times.add("preprocess", started)

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        called = time.perf_counter()
        answer = np.asarray(backend.infer(model, array))
        times.add("backend", called)  # the model's own time, within "infer"
        return torch.from_numpy(answer)

    batch = prepared.as_tensor()[None] if isinstance(prepared, MetaTensor) else prepared[None]
    if model.sliding_window:
        window = model.sliding_window
        output = sliding_window_inference(
            batch, roi_size=window["roi_size"], sw_batch_size=window.get("sw_batch_size", 1),
            predictor=predictor, overlap=window.get("overlap", 0.25),
            mode=window.get("mode", "gaussian"), sigma_scale=window.get("sigma_scale", 0.125),
            padding_mode=window.get("padding_mode", "constant"), cval=window.get("cval", 0.0),
        )
        prediction = output[0] if isinstance(output, torch.Tensor) else output[0][0]
    else:
        prediction = predictor(batch)[0]
    started = times.add("infer", started)

    operations = list(getattr(prepared, "applied_operations", []))
    if not (labels_only and (model.invert == "labels" or not operations)):
        prediction = activate(prediction, model.activation)
    if model.invert == "labels":  # argmax, then back to the source grid by nearest neighbour
        prediction = torch.from_numpy(
            labels_from(np.asarray(prediction), model.output_kind)[None].astype(np.float32))
    if operations:  # undo the spatial transforms so the prediction lands on the source grid
        if model.invert == "labels":
            operations = convert_applied_interp_mode(operations, mode="nearest")
        restored = MetaTensor(prediction, meta=dict(prepared.meta), applied_operations=operations)
        prediction = cast(Any, preprocess).inverse(restored)
    array = np.asarray(
        prediction.as_tensor() if isinstance(prediction, MetaTensor) else prediction
    )
    if model.layout == "ras":
        array = array.transpose(0, 3, 2, 1)
    times.add("postprocess", started)
    return array


def foreground_box(labels: NDArray[np.uint8]) -> tuple[slice, ...] | None:
    """The smallest box holding every non-zero voxel, or ``None`` when there is none."""
    box = []
    for axis in range(labels.ndim):
        others = tuple(a for a in range(labels.ndim) if a != axis)
        present = np.flatnonzero(np.any(labels, axis=others))
        if present.size == 0:
            return None
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def remove_small_objects(labels: NDArray[np.uint8],
                         transform: RemoveSmallObjects) -> NDArray[np.uint8]:
    """What MONAI's ``RemoveSmallObjects`` (sizes in voxels) gives on a [slice, row, column]
    label map, computed with scipy.ndimage: objects (connected components, or whole label
    values when several labels are kept apart, as scikit-image takes an integer map) of
    ``min_size`` voxels or fewer become background (as MONAI 1.6 on scikit-image 0.26 does).
    MONAI's own path (torch ``unique``, a full int32 component map indexed per voxel, copies
    between torch and numpy) took 2.4 s of a CT lesion job's node time; here it is a
    labelling and a bincount. ``tests/unit/infer/test_postprocess.py`` checks it against
    MONAI's result."""
    if labels.size == 0 or not np.any(labels != labels.flat[0]):
        return labels  # one value everywhere: MONAI returns it unchanged
    result = labels.copy()
    if transform.independent_channels and int(labels.max()) > 1:
        # an integer label map: each label value is one object (scikit-image's reading)
        sizes = np.bincount(labels.ravel())
        small = np.flatnonzero(sizes <= transform.min_size)
        result[np.isin(labels, small[small > 0])] = 0
        return result
    structure = ndimage.generate_binary_structure(labels.ndim, min(transform.connectivity,
                                                                   labels.ndim))
    components, _ = ndimage.label(labels > 0, structure)
    sizes = np.bincount(components.ravel())
    small = np.flatnonzero(sizes <= transform.min_size)
    small = small[small > 0]
    if small.size > SMALL_OBJECTS_ONE_BY_ONE:  # many: one pass over the whole map
        result[np.isin(components, small)] = 0
        return result
    boxes = ndimage.find_objects(components)
    for component in small:  # few: each only within its own box
        box = boxes[component - 1]
        if box is not None:
            result[box][components[box] == component] = 0
    return result


def _has_scipy_path(transform: Any) -> bool:
    """Whether ``transform`` has the scipy path above (sizes in voxels)."""
    return isinstance(transform, RemoveSmallObjects) and not transform.by_measure


def postprocess_labels(labels: NDArray[np.uint8], postprocess: Compose) -> NDArray[np.uint8]:
    """The post-processing transforms (connected-component filters) on the label map, run on
    the box around its foreground only: they never turn background into a label, and every
    component lies inside that box, so the result is the same as on the whole volume, at a
    fraction of the cost (a lesion of a few ml in a 35 M voxel CT: 1.8 s -> milliseconds)."""
    box = foreground_box(labels)
    if box is None:
        return labels
    cropped = labels[box].copy()  # some MONAI transforms act in place
    for transform in postprocess.transforms:
        if _has_scipy_path(transform):
            cropped = remove_small_objects(cropped, transform)
            continue
        with warnings.catch_warnings():  # MONAI 1.6 still passes scikit-image's old min_size
            warnings.filterwarnings("ignore", "Parameter `min_size` is deprecated",
                                    FutureWarning)
            cleaned = transform(torch.from_numpy(cropped)[None])
        cropped = np.asarray(cleaned.as_tensor() if isinstance(cleaned, MetaTensor)
                             else cleaned, dtype=np.uint8)[0]
    result = np.zeros_like(labels)
    result[box] = cropped
    return result


def run_model(
    volume: Volume, model: ModelSpec, backend: Backend, times: StageTimes | None = None
) -> NDArray[np.uint8]:
    """The model's label map on the volume's own grid: shape ``volume.voxels.shape``."""
    times = times or StageTimes()
    array = _predict_on_source_grid(volume, model, backend, times, labels_only=True)
    started = time.perf_counter()
    labels = labels_from(array, "labels" if model.invert == "labels" else model.output_kind)
    if model.postprocess:
        labels = postprocess_labels(labels, build_postprocess(model))
    if labels.shape != volume.voxels.shape:
        raise ModelConfigError(
            f"{model.name}: output maps back to {labels.shape}, source is {volume.voxels.shape}"
        )
    times.add("postprocess", started)
    return labels


def run_heatmap(
    volume: Volume, model: ModelSpec, backend: Backend, times: StageTimes | None = None
) -> NDArray[np.float32]:
    """A heatmap model's probability maps on the volume's own grid: [F, *voxels.shape] in
    [0, 1], one per finding (``model.labels``)."""
    times = times or StageTimes()
    array = _predict_on_source_grid(volume, model, backend, times)
    expected = (len(model.labels), *volume.voxels.shape)
    if array.shape != expected:
        raise ModelConfigError(
            f"{model.name}: a heatmap must map back to {expected}, got {array.shape}")
    maps: NDArray[np.float32] = np.clip(array.astype(np.float32), 0.0, 1.0)
    return maps
