"""A whole-slide model on a slide: tiles at the model's resolution, in batches, stitched.

The model's ``ainode_wsi`` (:class:`node.infer.contract.SlideTiling`) says the pixel spacing it
wants, the tile size and overlap, and whether only tissue is classified. Tissue is found once on
the slide's lowest-resolution level (:func:`node.imaging.slide.tissue_mask`). The level read is
the coarsest whose pixels are at least as fine as the model's; a region of it is read per
block of tiles (each frame decoded once per block), reduced to the model's spacing by area
averaging, cut into tiles, and only tiles with enough tissue go to the backend, in batches of
``batch_tiles``. Blocks without tissue are not read at all. Memory is one block and one batch,
whatever the slide's size. Positions are kept in the base level's pixels.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from node.imaging.slide import (
    LevelReader,
    SlideError,
    SlideLevel,
    tissue_level,
    tissue_mask,
)
from node.infer.backend import Backend
from node.infer.contract import SlideTiling
from node.infer.repository import ModelConfigError, ModelSpec
from node.infer.runner import StageTimes, activate

SPACING_TOLERANCE = 1.05  # a level up to 5 % coarser than asked counts as the model's spacing


@dataclass(frozen=True)
class TissueMap:
    """Tissue found on one (low-resolution) level."""

    level: SlideLevel
    mask: NDArray[np.bool_]  # [rows, columns] of that level

    @property
    def area_mm2(self) -> float:
        return float(self.mask.sum()) * self.level.spacing_mm[0] * self.level.spacing_mm[1]


@dataclass(frozen=True)
class TileResults:
    """Each classified tile: its box in the base level's pixels (row0, col0, row1, col1,
    end exclusive), its tissue fraction and the model's class probabilities."""

    boxes: NDArray[np.float64]  # [N, 4]
    tissue: NDArray[np.float32]  # [N]
    probabilities: NDArray[np.float32]  # [N, C]
    base_level: SlideLevel
    read_level: SlideLevel
    tissue_map: TissueMap
    tiles_total: int  # tiles of the grid, classified or not

    @property
    def classes(self) -> NDArray[np.intp]:
        return np.argmax(self.probabilities, axis=1) if len(self.probabilities) else \
            np.zeros((0,), dtype=np.intp)


def read_level_for(levels: list[SlideLevel], tiling: SlideTiling) -> SlideLevel:
    """The coarsest level whose pixels are as fine as the model asks (finest first)."""
    wanted = tiling.spacing_mm
    fine_enough = [level for level in levels if level.spacing <= wanted * SPACING_TOLERANCE]
    if not fine_enough:
        raise SlideError(f"the slide's finest level has {levels[0].spacing * 1000:.3g} µm "
                         f"pixels; the model needs {wanted * 1000:.3g} µm or finer")
    return fine_enough[-1]


def find_tissue(levels: list[SlideLevel]) -> TissueMap:
    level = tissue_level(levels)
    reader = LevelReader(level)
    return TissueMap(level, tissue_mask(reader.region(0, 0, level.rows, level.columns)))


def _tissue_fraction(tissue: TissueMap, base: SlideLevel, box: tuple[float, ...]) -> float:
    """The share of a base-pixel box that is tissue (nearest pixel of the tissue level)."""
    scale_rows = tissue.level.rows / base.rows
    scale_columns = tissue.level.columns / base.columns
    top = min(int(box[0] * scale_rows), tissue.level.rows - 1)
    left = min(int(box[1] * scale_columns), tissue.level.columns - 1)
    bottom = max(top + 1, min(math.ceil(box[2] * scale_rows), tissue.level.rows))
    right = max(left + 1, min(math.ceil(box[3] * scale_columns), tissue.level.columns))
    return float(tissue.mask[top:bottom, left:right].mean())


def run_slide_model(levels: list[SlideLevel], model: ModelSpec, backend: Backend,
                    times: StageTimes | None = None) -> TileResults:
    """Classify the slide's tiles (``levels``: readable, finest first)."""
    tiling = model.wsi
    if tiling is None:
        raise ModelConfigError(f"{model.name} is not a whole-slide model (no ainode_wsi)")
    times = times or StageTimes()
    started = time.perf_counter()
    base = levels[0]
    tissue = find_tissue(levels)
    started = times.add("tissue", started)
    level = read_level_for(levels, tiling)
    reader = LevelReader(level)
    factor = tiling.spacing_mm / level.spacing  # level pixels per model pixel (>= ~1)
    size = tiling.tile_size
    read = max(1, round(size * factor))  # a tile's side in level pixels
    stride = max(1, round((size - tiling.overlap) * factor))
    grid_rows = max(1, math.ceil((level.rows - read) / stride) + 1)
    grid_columns = max(1, math.ceil((level.columns - read) / stride) + 1)
    per_side = max(1, math.isqrt(tiling.batch_tiles))
    to_base = (base.rows / level.rows, base.columns / level.columns)
    boxes: list[tuple[float, ...]] = []
    fractions: list[float] = []
    outputs: list[NDArray[np.float32]] = []
    batch: list[NDArray[np.float32]] = []

    def flush() -> None:
        nonlocal started
        if not batch:
            return
        started = times.add("read", started)
        scores = np.asarray(backend.infer(model, np.stack(batch)), dtype=np.float32)
        if scores.shape != (len(batch), len(model.labels)):
            raise ModelConfigError(f"{model.name}: a tile classifier must output "
                                   f"[{len(batch)}, {len(model.labels)}], got {scores.shape}")
        outputs.append(activate(torch.from_numpy(scores), model.activation, dim=1).numpy())
        batch.clear()
        started = times.add("infer", started)

    for block_row in range(0, grid_rows, per_side):
        for block_column in range(0, grid_columns, per_side):
            tiles = [(r, c) for r in range(block_row, min(block_row + per_side, grid_rows))
                     for c in range(block_column, min(block_column + per_side, grid_columns))]
            wanted = []
            for r, c in tiles:
                box = (r * stride * to_base[0], c * stride * to_base[1],
                       (r * stride + read) * to_base[0], (c * stride + read) * to_base[1])
                fraction = _tissue_fraction(tissue, base, box)
                if not tiling.tissue_only or fraction >= tiling.min_tissue:
                    wanted.append((r, c, box, fraction))
            if not wanted:
                continue  # no tissue here: the block is not read
            top = block_row * stride
            left = block_column * stride
            height = (tiles[-1][0] - block_row) * stride + read
            width = (tiles[-1][1] - block_column) * stride + read
            region = reader.region(top, left, height, width)
            for r, c, box, fraction in wanted:
                y, x = r * stride - top, c * stride - left
                tile = region[y:y + read, x:x + read]
                if read != size:
                    tile = np.asarray(Image.fromarray(tile).resize((size, size),
                                                                   Image.Resampling.BOX))
                batch.append(np.ascontiguousarray(tile.transpose(2, 0, 1), dtype=np.float32)
                             / 255.0)
                boxes.append(box)
                fractions.append(fraction)
                if len(batch) >= tiling.batch_tiles:
                    flush()
    flush()
    classes = len(model.labels)
    return TileResults(
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        tissue=np.asarray(fractions, dtype=np.float32),
        probabilities=(np.concatenate(outputs) if outputs
                       else np.zeros((0, classes), dtype=np.float32)),
        base_level=base,
        read_level=level,
        tissue_map=tissue,
        tiles_total=grid_rows * grid_columns,
    )
