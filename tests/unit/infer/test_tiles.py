"""Tiles of a slide for a whole-slide model: only where there is tissue, never more than a
batch at once, positions in the base level's pixels (a recording backend stands in for the
model; the slide is real DICOM, JPEG tiles, built from highdicom's test WSI header)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from node.imaging.slide import SlideError, check_pyramid, describe_slide
from node.infer.contract import SlideTiling
from node.infer.repository import ModelSpec, load_model_spec
from node.infer.tiles import read_level_for, run_slide_model
from tests.support.environment import ROOT
from tests.support.slides import in_tissue, large_slide

TEMPLATE = ROOT.parent / "shared" / "data" / "reference" / "highdicom_test_files" / "sm_image.dcm"
SIZE = 4096


class RecordingBackend:
    name = "recording"

    def __init__(self) -> None:
        self.batches: list[tuple[int, ...]] = []

    def check(self, model: ModelSpec) -> None:
        pass

    def infer(self, model: ModelSpec, tensor: NDArray[np.float32]) -> NDArray[np.float32]:
        self.batches.append(tensor.shape)
        darkness = 1.0 - tensor.mean(axis=(1, 2, 3))
        return np.stack([-darkness, np.zeros_like(darkness), darkness], axis=1)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    made = large_slide(tmp_path_factory.mktemp("slide"), TEMPLATE, size=SIZE)
    return check_pyramid(describe_slide([str(f) for f in made.files]))


def model(**tiling: Any) -> ModelSpec:
    spec = load_model_spec(ROOT / "model_repository", "wsi_stain_density")
    return dataclasses.replace(spec, wsi=SlideTiling(**{"pixel_spacing_um": 1.0,
                                                        "tile_size": 64, **tiling}))


def test_the_pyramid_is_read_from_the_headers_finest_first(slide: list[Any]) -> None:
    assert [(level.rows, level.columns) for level in slide] == [(SIZE, SIZE), (256, 256)]
    assert slide[0].spacing == pytest.approx(0.0005) and slide[1].spacing == pytest.approx(0.008)
    assert read_level_for(slide, SlideTiling(pixel_spacing_um=1.0)) == slide[0]
    assert read_level_for(slide, SlideTiling(pixel_spacing_um=10.0)) == slide[1]
    with pytest.raises(SlideError, match=r"finest level has 0\.5 .m"):
        read_level_for(slide, SlideTiling(pixel_spacing_um=0.25))


def test_only_tissue_tiles_reach_the_model_in_batches_no_larger_than_asked(
        slide: list[Any]) -> None:
    backend = RecordingBackend()
    results = run_slide_model(slide, model(batch_tiles=16), backend)
    assert max(shape[0] for shape in backend.batches) <= 16
    assert all(shape[1:] == (3, 64, 64) for shape in backend.batches)
    assert sum(shape[0] for shape in backend.batches) == len(results.boxes)
    # the grid: 128 base pixels per tile (64 at 1 µm from 0.5 µm)
    assert results.tiles_total == (SIZE // 128) ** 2
    # every tile has tissue (>= 25 % of it: its centre or a corner lies on it)
    points = [(results.boxes[:, 0] + results.boxes[:, 2]) / 2,
              (results.boxes[:, 1] + results.boxes[:, 3]) / 2]
    touches = in_tissue(points[0], points[1], SIZE)
    for row in (0, 2):
        for column in (1, 3):
            touches |= in_tissue(results.boxes[:, row], results.boxes[:, column], SIZE)
    assert touches.all()
    assert 0 < len(results.boxes) < 0.1 * results.tiles_total
    assert np.all((results.boxes[:, 2:] - results.boxes[:, :2]) == 128)
    # tissue tiles are darker than glass: the recording model calls them "dense"
    assert np.all(results.classes == 2)


def test_without_tissue_only_every_tile_is_classified(slide: list[Any]) -> None:
    results = run_slide_model(slide, model(tissue_only=False, batch_tiles=256),
                              RecordingBackend())
    assert len(results.boxes) == results.tiles_total


def test_a_slide_without_a_frame_of_reference_is_refused(slide: list[Any]) -> None:
    description = describe_slide([level.path for level in slide])
    stripped = dataclasses.replace(description, levels=tuple(
        dataclasses.replace(level, frame_of_reference_uid="") for level in description.levels))
    with pytest.raises(SlideError, match="no Frame of Reference"):
        check_pyramid(stripped)
