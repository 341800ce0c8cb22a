"""Post-processing on the foreground box gives exactly what it gives on the whole volume."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.transforms.compose import Compose
from monai.transforms.post.array import KeepLargestConnectedComponent, RemoveSmallObjects
from scipy import ndimage

from node.infer.runner import (
    SMALL_OBJECTS_ONE_BY_ONE,
    foreground_box,
    labels_from,
    postprocess_labels,
    remove_small_objects,
)


def _blobs(shift: int) -> np.ndarray:
    """A label map with a large and a small object of label 1, a small object of label 2 and
    a larger one at a corner of the volume; ``shift`` moves them about."""
    labels = np.zeros((24, 64, 64), dtype=np.uint8)
    labels[4 + shift:10 + shift, 10:20, 12 + shift:22 + shift] = 1  # 600 voxels
    labels[15:17, 40 + shift:42 + shift, 40:42] = 1  # 8 voxels
    labels[2:4, 50:52, 5 + shift:7 + shift] = 2  # 8 voxels
    labels[20:24, 58:64, 0:3] = 2  # 72 voxels, at a corner
    return labels


def _whole(labels: np.ndarray, transforms: Compose) -> np.ndarray:
    with warnings.catch_warnings():  # MONAI 1.6 still passes scikit-image's old min_size
        warnings.simplefilter("ignore", FutureWarning)
        return np.asarray(transforms(torch.from_numpy(labels.copy())[None]), dtype=np.uint8)[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("transform", [
    RemoveSmallObjects(min_size=20, independent_channels=False),
    KeepLargestConnectedComponent(),
    KeepLargestConnectedComponent(applied_labels=[1], independent=True, connectivity=3),
])
def test_same_result_as_on_the_whole_volume(seed: int, transform: object) -> None:
    labels = _blobs(seed)
    transforms = Compose([transform])
    expected = _whole(labels, transforms)
    assert not np.array_equal(expected, labels)  # the transform did remove something
    assert np.array_equal(postprocess_labels(labels, transforms), expected)
    assert np.array_equal(labels, _blobs(seed))  # the input is left as it was


def test_box_spans_exactly_the_foreground() -> None:
    labels = np.zeros((5, 6, 7), dtype=np.uint8)
    labels[1, 2, 3] = 1
    labels[3, 4, 5] = 2
    assert foreground_box(labels) == (slice(1, 4), slice(2, 5), slice(3, 6))


def test_an_empty_label_map_is_returned_as_it_is() -> None:
    labels = np.zeros((4, 8, 8), dtype=np.uint8)
    assert foreground_box(labels) is None
    assert postprocess_labels(labels, Compose([RemoveSmallObjects(min_size=5)])) is labels


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_labels_are_the_argmax_of_the_scores_ties_to_the_lower_label(channels: int) -> None:
    rng = np.random.default_rng(channels)
    scores = rng.integers(0, 3, size=(channels, 6, 7, 8)).astype(np.float32)  # many ties
    labels = labels_from(scores, "probabilities")
    assert labels.dtype == np.uint8 and labels.shape == (6, 7, 8)
    assert np.array_equal(labels, np.argmax(scores, axis=0))


def _speckled(seed: int, labels: int, density: float) -> np.ndarray:
    """Random blobs of every size (and label values 1..``labels``): many components, some
    touching only diagonally, some larger than the thresholds below."""
    rng = np.random.default_rng(seed)
    noise = rng.random((20, 48, 48)) < density
    noise[5:12, 10:30, 10:25] = True  # one object of 2,100 voxels
    values = rng.integers(1, labels + 1, size=noise.shape).astype(np.uint8)
    return np.where(noise, values, 0).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("labels", "density"), [(1, 0.05), (1, 0.3), (3, 0.05), (2, 0.5)])
@pytest.mark.parametrize("options", [
    {"min_size": 3},
    {"min_size": 300},
    {"min_size": 5, "connectivity": 2},
    {"min_size": 5, "connectivity": 3},
    {"min_size": 40, "independent_channels": False},
    {"min_size": 2500},  # everything goes
])
def test_remove_small_objects_gives_what_monai_gives(seed: int, labels: int, density: float,
                                                     options: dict[str, int]) -> None:
    """The scipy path of RemoveSmallObjects against MONAI's own transform on the same map:
    binary and multi-label maps, each connectivity, labels kept apart or not, with few and with
    thousands of small objects (the one-pass branch)."""
    speckled = _speckled(seed, labels, density)
    transform = RemoveSmallObjects(**options)
    expected = _whole(speckled, Compose([transform]))
    assert np.array_equal(remove_small_objects(speckled, transform), expected)
    assert np.array_equal(postprocess_labels(speckled, Compose([transform])), expected)


def test_many_small_objects_take_the_one_pass_branch() -> None:
    speckled = np.concatenate([_speckled(0, 1, 0.05), _speckled(1, 1, 0.05)])
    _, count = ndimage.label(speckled > 0)
    assert count > SMALL_OBJECTS_ONE_BY_ONE  # the branch above is exercised
    transform = RemoveSmallObjects(min_size=2)
    assert np.array_equal(remove_small_objects(speckled, transform),
                          _whole(speckled, Compose([transform])))


def test_a_map_of_one_value_is_returned_as_it_is() -> None:
    ones = np.ones((4, 5, 6), dtype=np.uint8)
    assert remove_small_objects(ones, RemoveSmallObjects(min_size=1000)) is ones
