"""mr_brain_extraction: brain extraction on T1-weighted MR, deepbet 1.0.2's two pretrained
networks run as two stages (Fisch et al., "deepbet: Fast brain extraction of T1-weighted MRI using
Convolutional Neural Networks", Computers in Biology and Medicine 2024; MIT licence, ../LICENSE).

One piece of stage code for both backends:

* on Triton this file is a Python-backend model that calls the two networks with BLS
  (Business Logic Scripting), so both run on the inference server's GPU and only the crop
  arithmetic runs here;
* the node's embedded backend imports :func:`run` from this same file and hands it its own
  inference function, so one contract gives one answer on both backends.

The input is the head in RAS voxel order ([1, 1, x, y, z], float32: the node's ``Orientation``
transform gives what deepbet gets from ``nibabel.as_closest_canonical``); the output is the brain
mask on that grid ([1, 1, x, y, z], uint8). The steps are deepbet's ``BrainExtraction.run``,
reproduced with numpy and scipy (no deepbet code at run time): the voxel grid (not the physical
spacing) resized to 128^3 with torch's ``nearest-exact`` rule, intensities normalised on the
0.5 %/99.5 % quantiles, the bbox network, the largest connected component, its box with a 10 %
margin, the crop resized to 256^3, the mask network, back to the crop, threshold 0.5, the largest
connected component and the enclosed voids filled. A volume in which the first network finds no
brain gets an empty mask.
"""

import json
from collections.abc import Callable

import numpy as np
from scipy import ndimage

SMALL = (128, 128, 128)
FULL = (256, 256, 256)
QUANTILES = (0.005, 0.995)
BOX_MARGIN = 0.1  # of the box's size, on each side
BOX_FRACTION = 0.02  # a plane belongs to the box when this fraction of it is brain
THRESHOLD = 0.5
NEIGHBOURS = ndimage.generate_binary_structure(3, 3)  # 26-connected, as cc3d's default

Infer = Callable[[str, np.ndarray], np.ndarray]  # (stage role, [1, 1, ...] input) -> output


def _nearest_exact(size_in: int, size_out: int) -> np.ndarray:
    """Source index per output index, as torch's ``nearest-exact`` computes it (in float32)."""
    scale = np.float32(size_in / size_out)
    centres = (np.arange(size_out, dtype=np.float64) + 0.5) * np.float64(scale)
    index = np.floor(centres.astype(np.float32)).astype(np.int64)
    return np.minimum(index, size_in - 1)


def resize(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resize a 3-D array to ``shape`` by nearest-exact indexing."""
    index = [_nearest_exact(a, b) for a, b in zip(volume.shape, shape, strict=True)]
    return volume[np.ix_(*index)]


def normalise(volume: np.ndarray, low: np.float32, high: np.float32) -> np.ndarray:
    """deepbet's normalisation: quantile window, then standardised onto ImageNet's mean/std."""
    scaled = np.clip((volume - low) / (high - low), 0, 1).astype(np.float32)
    scaled = (scaled - scaled.mean(dtype=np.float32)) / scaled.std(ddof=1, dtype=np.float32)
    return (np.float32(0.226) * scaled + np.float32(0.449)).astype(np.float32)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (empty stays empty)."""
    labels, count = ndimage.label(mask, structure=NEIGHBOURS)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def box_with_margin(small: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The brain's box found on the 128^3 grid, scaled to ``shape`` with a 10 % margin."""
    planes = [np.flatnonzero(small.mean(axis=axes) > BOX_FRACTION)
              for axes in ((1, 2), (0, 2), (0, 1))]
    centre = np.array([(p.max() + 1 + p.min()) / 2 for p in planes], dtype=np.float32)
    size = np.array([(p.max() + 1) - p.min() for p in planes], dtype=np.float32)
    scale = np.array(shape, dtype=np.float32) / np.array(small.shape, dtype=np.float32)
    centre, size = np.round(scale * centre), np.round(np.float32(1 + 2 * BOX_MARGIN) * (scale * size))
    return tuple(slice(max(0, int(c - s / 2)), min(n, int(c + s / 2)))
                 for c, s, n in zip(centre, size, shape, strict=True))


def run(image: np.ndarray, infer: Infer) -> np.ndarray:
    """[1, 1, x, y, z] T1 MR in RAS voxel order -> [1, 1, x, y, z] uint8 brain mask."""
    head = np.nan_to_num(np.asarray(image, dtype=np.float32)[0, 0])
    small = resize(head, SMALL)
    low, high = (np.float32(q) for q in np.quantile(small, QUANTILES))
    found = infer("bbox", normalise(small, low, high)[None, None])[0, 1] > THRESHOLD
    found = largest_component(found)
    mask = np.zeros(head.shape, dtype=bool)
    if found.any():
        box = box_with_margin(found.astype(np.float32), head.shape)
        crop = resize(head[box], FULL)
        brain = infer("mask", normalise(crop, low, high)[None, None])[0, 1]
        inside = resize(brain, mask[box].shape) > THRESHOLD
        mask[box] = ndimage.binary_fill_holes(largest_component(inside))
    return mask.astype(np.uint8)[None, None]


try:  # inside tritonserver's Python backend
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported by the node's embedded backend
    pb_utils = None


class TritonPythonModel:
    """The stages on Triton: each network is called with BLS, its output read on the CPU."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"]
                      for key, value in config.get("parameters", {}).items()}
        self.stages = json.loads(parameters["ainode_stages"])
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]

    def _infer(self, role, array):
        options = {}
        if hasattr(pb_utils, "PreferredMemory"):
            options["preferred_memory"] = pb_utils.PreferredMemory(
                pb_utils.TRITONSERVER_MEMORY_CPU, 0)
        request = pb_utils.InferenceRequest(
            model_name=self.stages[role], requested_output_names=["OUTPUT__0"],
            inputs=[pb_utils.Tensor("INPUT__0", np.ascontiguousarray(array, dtype=np.float32))],
            **options)
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.stages[role]}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, "OUTPUT__0").as_numpy()

    def execute(self, requests):
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy()
            try:
                mask = run(image, self._infer)
            except Exception as exc:  # one request's failure is its own error answer
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(str(exc)[:300])))
                continue
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(self.output, mask)]))
        return responses
