#!/usr/bin/env python3
"""cxr_lung_seg: the lung fields of a frontal chest radiograph (CR / DX), from intensity and
2-D morphology.

DEMONSTRATION MODEL, NOT A MEDICAL DEVICE. Radiographs have no absolute intensity scale, so
the model normalises by the image itself. Written as a torch module so that it exports to ONNX
and runs unchanged in Triton and in-process. Run this file to (re)export
``model_repository/cxr_lung_seg/1/model.onnx``.

Input ``image``: float32 [N, 1, 1, H, W], larger = brighter (the node inverts MONOCHROME1),
H and W divisible by 8 (the pre-processing pads by replicating the edge). Output ``labels``:
uint8 [N, 1, 1, H, W], 0 background, 1 lungs. Steps, on an 8x coarser image (the mean of each
8x8 block), each with an independent scipy twin in tests/independent.py:

1. dark = block mean < 0.95 x the image mean (aerated lung, and air outside the body).
2. free = dark eroded with a 9x9 box (outside the image counts as dark): cuts the narrow dark
   channels that join the lung fields to the air outside the body.
3. outside = geodesic dilation from the image border through ``free`` (3x3 steps, 200
   iterations), dilated back with the 9x9 box within ``dark``.
4. lungs = dark and not outside, opened with a 5x5 box, then closed with a 7x7 box (rib
   shadows inside the fields).
5. What of that touches the image border is dropped (geodesic dilation from the border
   through ``lungs``, 3x3 steps, 60 iterations): dark corners and the air above the shoulders
   cut off by step 2 are not lung, and a frontal chest film shows soft tissue all round the
   lung fields. Each block's label is repeated over its 8x8 pixels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from ct_body_seg import border_seed, dilate, erode, export_volume_model, opening
from torch import nn

SCALE = 8
THRESHOLD_FRACTION = 0.95
CUT = 9
FLOOD_ITERATIONS = 200
EDGE_ITERATIONS = 60
OPEN = 5
CLOSE = 7
LABELS = ("background", "lungs")


class CXRLungSeg(nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        small = F.avg_pool3d(image, kernel_size=(1, SCALE, SCALE))
        dark = (small < THRESHOLD_FRACTION * small.mean()).float()
        free = erode(dark, (1, CUT, CUT))
        outside = border_seed(free)
        for _ in range(FLOOD_ITERATIONS):
            outside = dilate(outside, (1, 3, 3)) * free
        outside = dilate(outside, (1, CUT, CUT)) * dark
        lungs = opening(dark * (1.0 - outside), (1, OPEN, OPEN))
        lungs = erode(dilate(lungs, (1, CLOSE, CLOSE)), (1, CLOSE, CLOSE))
        touching = border_seed(lungs)
        for _ in range(EDGE_ITERATIONS):
            touching = dilate(touching, (1, 3, 3)) * lungs
        lungs = lungs * (1.0 - touching)
        full = lungs.repeat_interleave(SCALE, dim=3).repeat_interleave(SCALE, dim=4)
        return full.to(torch.uint8)


def export(path: Path) -> None:
    export_volume_model(CXRLungSeg(), torch.zeros((1, 1, 1, 64, 64)), "image", path)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else (
        Path(__file__).resolve().parent.parent / "model_repository/cxr_lung_seg/1/model.onnx")
    export(target)
    print(f"exported {target} ({target.stat().st_size} bytes)")
