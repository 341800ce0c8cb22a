#!/usr/bin/env python3
"""mr_head_mask: a deterministic head mask for MR volumes (any weighting, any orientation).

DEMONSTRATION MODEL, NOT A MEDICAL DEVICE. MR has no absolute intensity scale (no Hounsfield
units), so the model normalises by the image itself: the threshold is a quarter of the mean of
the voxels brighter than the volume's mean. Written as a torch module (same morphology as
ct_body_seg) so that it exports to ONNX and runs unchanged in Triton and in-process. Run this
file to (re)export ``model_repository/mr_head_mask/1/model.onnx``.

Input ``image``: float32 [N, 1, D, H, W] (stored values after rescale), H and W divisible by 4.
Output ``labels``: uint8 [N, 1, D, H, W], 0 background, 1 head. Steps (D is the slice axis;
in-plane operations only, as MR slices are often thick), each with an independent scipy twin in
tests/independent.py:

1. tissue = image > 0.25 x mean(image[image > mean(image)]), opened per slice with a 1x5x5 box.
2. Outside, per slice: geodesic dilation from the in-plane border through ``not tissue``, first
   on a 4x coarser grid (a block is free only if all of it is; 3x3 steps, 40 iterations), then
   6 full-resolution 3x3 steps from the upsampled result (closed cavities count as head).
3. head = not outside, opened per slice with a 1x5x5 box.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from ct_body_seg import export_volume_model, flood_from_border, opening
from torch import nn

THRESHOLD_FRACTION = 0.25
COARSE_ITERATIONS = 40
LABELS = ("background", "head")


class MRHeadMask(nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean = image.mean()
        bright = (image > mean).float()
        level = (image * bright).sum() / bright.sum().clamp(min=1.0)
        tissue = opening((image > THRESHOLD_FRACTION * level).float(), (1, 5, 5))
        outside = flood_from_border(1.0 - tissue, COARSE_ITERATIONS)
        head = opening(1.0 - outside, (1, 5, 5))
        return head.to(torch.uint8)


def export(path: Path) -> None:
    export_volume_model(MRHeadMask(), torch.zeros((1, 1, 4, 32, 32)), "image", path)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else (
        Path(__file__).resolve().parent.parent / "model_repository/mr_head_mask/1/model.onnx")
    export(target)
    print(f"exported {target} ({target.stat().st_size} bytes)")
