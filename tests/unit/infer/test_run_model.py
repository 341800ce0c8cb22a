"""``run_model`` leaves the activation out only where it cannot change the labels.

The backend here is a stand-in that returns fixed scores (this is a unit test of the runner);
the real backends are exercised in tests/integration/test_inference.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from node.imaging.volume import SliceRef, Volume
from node.infer.repository import ModelSpec
from node.infer.runner import activate, labels_from, run_model


class FixedScores:
    """Answers every call with ``scores`` (cropped or padded to the input it gets)."""

    name = "fixed"

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores
        self.inputs: list[tuple[int, ...]] = []

    def check(self, model: ModelSpec) -> None:
        return None

    def infer(self, model: ModelSpec, tensor: np.ndarray) -> np.ndarray:
        self.inputs.append(tensor.shape)
        out = np.zeros((1, self.scores.shape[0], *tensor.shape[2:]), dtype=np.float32)
        box = tuple(slice(0, min(a, b)) for a, b in zip(tensor.shape[2:],
                                                        self.scores.shape[1:], strict=True))
        out[(0, slice(None), *box)] = self.scores[(slice(None), *box)]
        return out

    def close(self) -> None:
        return None


def _volume(shape: tuple[int, int, int]) -> Volume:
    return Volume(np.zeros(shape, dtype=np.float32), np.diag([0.7, 0.7, 2.0, 1.0]),
                  tuple(SliceRef(f"1.2.{k}", "1.2.840.10008.5.1.4.1.1.2")
                        for k in range(shape[0])), "1.2.3", "1.2.4", "1.2.5", "CT")


def _spec(activation: str, preprocess: tuple[dict[str, Any], ...] = (),
          invert: str = "probabilities") -> ModelSpec:
    return ModelSpec("m", "1.0.0", 1, "onnxruntime_onnx", (), (), ("background", "a", "b"),
                     "probabilities", preprocess, (), None, Path("model.onnx"),
                     activation=activation, invert=invert)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid", "none"])
def test_labels_without_inversion_are_the_argmax_of_the_activated_scores(
        activation: str) -> None:
    rng = np.random.default_rng(7)
    scores = (rng.standard_normal((3, 4, 8, 8)) * 4).astype(np.float32)
    labels = run_model(_volume((4, 8, 8)), _spec(activation), FixedScores(scores))
    expected = labels_from(np.asarray(activate(torch.from_numpy(scores), activation)),
                           "probabilities")
    assert np.array_equal(labels, expected) and labels.any()


def test_probabilities_interpolated_back_are_activated_first() -> None:
    """A Resize to half the grid: the probabilities (not the scores) are interpolated back,
    and a class that wins only by a large score in one voxel does not spread as it would."""
    scores = np.zeros((3, 4, 4, 4), dtype=np.float32)
    scores[1] = 1.0  # "a" a little ahead everywhere
    scores[2, 0, 0, 0] = 60.0  # "b" far ahead in one voxel of the half grid
    resize = ({"transform": "Resize", "spatial_size": [4, 4, 4], "mode": "trilinear"},)
    backend = FixedScores(scores)
    labels = run_model(_volume((8, 8, 8)), _spec("softmax", resize), backend)
    assert backend.inputs == [(1, 1, 4, 4, 4)]
    scores_resized = torch.nn.functional.interpolate(
        torch.from_numpy(scores)[None], size=(8, 8, 8), mode="trilinear")[0]
    with_scores = labels_from(np.asarray(scores_resized), "probabilities")
    assert (labels == 2).sum() < (with_scores == 2).sum()  # what skipping would have given
    assert (labels == 1).sum() > 0
