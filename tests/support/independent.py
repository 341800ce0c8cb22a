"""An independent implementation of ct_body_seg's definition with numpy/scipy, for tests.

Written from the model's documented steps (models/ct_body_seg.py docstring), not from its code:
scipy's separable min/max filters instead of torch max-pooling, its own DICOM reading and
ordering. Used to check that the node's label map lands on the right voxels of the source grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from scipy import ndimage


def read_ct(folder: Path) -> tuple[NDArray[np.float32], list[str]]:
    """HU volume ordered by ImagePositionPatient z (axial CT), and the SOP UID of each slice."""
    datasets = [pydicom.dcmread(f) for f in folder.glob("*.dcm")]
    datasets.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    hu = np.stack([
        d.pixel_array.astype(np.float32) * np.float32(d.RescaleSlope)
        + np.float32(d.RescaleIntercept) for d in datasets
    ])
    return hu, [str(d.SOPInstanceUID) for d in datasets]


def _dilate(mask: NDArray[np.bool_], size: tuple[int, ...]) -> NDArray[np.bool_]:
    return ndimage.maximum_filter(mask, size=size, mode="constant", cval=0)


def _erode(mask: NDArray[np.bool_], size: tuple[int, ...]) -> NDArray[np.bool_]:
    return ndimage.minimum_filter(mask, size=size, mode="constant", cval=1)


def _open(mask: NDArray[np.bool_], size: tuple[int, ...]) -> NDArray[np.bool_]:
    return _dilate(_erode(mask, size), size)


def _ring(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    ring = np.zeros_like(mask)
    ring[:, 0, :] = ring[:, -1, :] = ring[:, :, 0] = ring[:, :, -1] = True
    return ring & mask


def _geodesic(seed: NDArray[np.bool_], mask: NDArray[np.bool_], steps: int) -> NDArray[np.bool_]:
    grown = seed
    for _ in range(steps):
        grown = _dilate(grown, (1, 3, 3)) & mask
    return grown


def _outside(free: NDArray[np.bool_], coarse_steps: int) -> NDArray[np.bool_]:
    """Reachable from each slice's border through ``free``: ``coarse_steps`` on the 4x coarser
    grid (a block free only if all of it is), then 6 full-resolution steps."""
    coarse = _coarse(free)
    outside = _geodesic(_ring(coarse), coarse, coarse_steps)
    outside = np.repeat(np.repeat(outside, 4, axis=1), 4, axis=2)
    outside = (outside & free) | _ring(free)
    return _geodesic(outside, free, 6)


def _coarse(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    d, h, w = mask.shape
    return mask.reshape(d, h // 4, 4, w // 4, 4).all(axis=(2, 4))


def _core_connected(body: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Step 4: what 30 coarse 3x3x3 steps and 6 fine 1x3x3 steps reach from the coarse body
    eroded by a 1x7x7 box."""
    coarse = _coarse(body)
    kept = _erode(coarse, (1, 7, 7))
    for _ in range(30):
        kept = _dilate(kept, (3, 3, 3)) & coarse
    kept = np.repeat(np.repeat(kept, 4, axis=1), 4, axis=2) & body
    return _geodesic(kept, body, 6)


def body_gas_dense(hu: NDArray[np.float32]) -> NDArray[np.uint8]:
    """0 background, 1 body, 2 gas, 3 dense; H and W must be multiples of 4."""
    air = hu < -500
    free = ~_open(~air, (1, 7, 7))
    outside = _outside(free, 80)
    body = _core_connected(_open(~outside, (3, 7, 7)))
    gas = _open(air & body, (3, 3, 3))
    dense = _open((hu > 250) & body, (3, 3, 3))
    gas &= ~dense
    body &= ~gas & ~dense
    return (body * 1 + gas * 2 + dense * 3).astype(np.uint8)


def read_series(folder: Path) -> tuple[NDArray[np.float32], list[str]]:
    """Any single-frame series, ordered by position along its slice normal (rescaled values),
    and the SOP UID of each slice."""
    datasets = [pydicom.dcmread(f) for f in folder.glob("*.dcm")]
    row, col = (np.array(datasets[0].ImageOrientationPatient[i:i + 3], float) for i in (0, 3))
    normal = np.cross(row, col)
    datasets.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))
    values = np.stack([
        d.pixel_array.astype(np.float32) * np.float32(d.get("RescaleSlope", 1) or 1)
        + np.float32(d.get("RescaleIntercept", 0) or 0) for d in datasets
    ])
    return values, [str(d.SOPInstanceUID) for d in datasets]


def head_mask(image: NDArray[np.float32]) -> NDArray[np.uint8]:
    """mr_head_mask's documented steps: 1 head, 0 background; H and W multiples of 4."""
    level = image[image > image.mean()].mean()
    tissue = _open(image > 0.25 * level, (1, 5, 5))
    outside = _outside(~tissue, 40)
    return _open(~outside, (1, 5, 5)).astype(np.uint8)


def read_radiograph(path: Path) -> tuple[NDArray[np.float32], str]:
    """One radiograph, larger = brighter (MONOCHROME1 inverted), and its SOP Instance UID."""
    dataset = pydicom.dcmread(path)
    image = dataset.pixel_array.astype(np.float32)
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        image = image.max() + image.min() - image
    return image, str(dataset.SOPInstanceUID)


def _blocks_of_padded(image: NDArray[np.float32]) -> tuple[NDArray[np.float64], tuple[int, int]]:
    """The image padded to multiples of 8 by repeating its edge, half before and half after
    (the models' pre-processing), as the mean of each 8x8 block; and the padding before."""
    rows, cols = image.shape
    pad_r, pad_c = -rows % 8, -cols % 8
    padded = np.pad(image, ((pad_r // 2, pad_r - pad_r // 2), (pad_c // 2, pad_c - pad_c // 2)),
                    mode="edge")
    blocks = padded.reshape(padded.shape[0] // 8, 8, padded.shape[1] // 8, 8).mean(axis=(1, 3))
    return blocks, (pad_r // 2, pad_c // 2)


def _full_size(blocks: NDArray[Any], before: tuple[int, int],
               shape: tuple[int, ...]) -> NDArray[Any]:
    full = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)
    return full[before[0]:before[0] + shape[0], before[1]:before[1] + shape[1]]


def mass_map(image: NDArray[np.float32]) -> NDArray[np.float64]:
    """cxr_mass_map's documented steps on a 2-D radiograph: the probability of a round
    opacity per pixel, 0-1."""
    blocks, before = _blocks_of_padded(image)
    standard = (blocks - blocks.mean()) / blocks.std()
    contrast = (ndimage.uniform_filter(standard, 25, mode="nearest")
                - ndimage.uniform_filter(standard, 49, mode="nearest"))
    probability = 1.0 / (1.0 + np.exp(-20.0 * (contrast - 0.85)))
    result: NDArray[np.float64] = _full_size(probability, before, image.shape)
    return result


def lung_fields(image: NDArray[np.float32]) -> NDArray[np.uint8]:
    """cxr_lung_seg's documented steps on a 2-D radiograph: 1 lungs, 0 background. The image
    is first padded to multiples of 8 by repeating its edge, half before and half after (the
    model's pre-processing), and the result cropped back."""
    blocks, before = _blocks_of_padded(image.astype(np.float32))
    dark = blocks < 0.95 * blocks.mean()
    box = (9, 9)
    free = _erode(dark, box)
    seed = np.zeros_like(free)
    seed[[0, -1], :] = True
    seed[:, [0, -1]] = True
    outside = ndimage.binary_dilation(seed & free, np.ones((3, 3), bool), iterations=200,
                                      mask=free)
    outside = _dilate(outside, box) & dark
    lungs = _open(dark & ~outside, (5, 5))
    lungs = _erode(_dilate(lungs, (7, 7)), (7, 7))  # closing
    edge = np.zeros_like(lungs)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    touching = ndimage.binary_dilation(edge & lungs, np.ones((3, 3), bool), iterations=60,
                                       mask=lungs)
    lungs &= ~touching
    return _full_size(lungs, before, image.shape).astype(np.uint8)
