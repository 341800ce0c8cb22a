#!/usr/bin/env python3
"""cxr_mass_map: where a frontal chest radiograph holds a round opacity, as a probability map.

DEMONSTRATION MODEL, NOT A MEDICAL DEVICE: it exists so that the heatmap output kind (a
FRACTIONAL SEG of type PROBABILITY and a burned-in Secondary Capture) runs end to end. A
centre-surround filter, written as a torch module so that it exports to ONNX and runs unchanged
in Triton and in-process. Run this file to (re)export ``model_repository/cxr_mass_map/1/model.onnx``.

Input ``image``: float32 [N, 1, 1, H, W], larger = brighter (the node inverts MONOCHROME1),
H and W divisible by 8 (the pre-processing pads by replicating the edge). Output ``probability``:
float32 [N, 1, 1, H, W] in [0, 1]. Steps, each with an independent scipy twin in
tests/independent.py (``mass_map``):

1. small = the mean of each 8x8 block, standardised over the image (mean 0, population sd 1).
2. contrast = the mean over a 25x25 block window minus the mean over a 49x49 window (edges
   replicated): a bright disc of 10-20 blocks radius stands out, edges and ribs much less.
3. probability = sigmoid(20 x (contrast - 0.85)), each block's value repeated over its 8x8 pixels.

On the shared radiograph (tests/radiographs.py) the plain film peaks at 0.02 and the film with
the synthetic 140-pixel mass at 0.99, on the mass.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from ct_body_seg import export_volume_model
from torch import nn

SCALE = 8
INNER = 25
OUTER = 49
CENTRE = 0.85
GAIN = 20.0


def box_mean(image: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over a size x size window of each [N, 1, 1, h, w] pixel, edges replicated."""
    half = size // 2
    padded = F.pad(image, (half, half, half, half, 0, 0), mode="replicate")
    return F.avg_pool3d(padded, kernel_size=(1, size, size), stride=1)


class CXRMassMap(nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        small = F.avg_pool3d(image, kernel_size=(1, SCALE, SCALE))
        centred = small - small.mean()
        standard = centred / torch.sqrt((centred * centred).mean())
        contrast = box_mean(standard, INNER) - box_mean(standard, OUTER)
        probability = torch.sigmoid(GAIN * (contrast - CENTRE))
        return probability.repeat_interleave(SCALE, dim=3).repeat_interleave(SCALE, dim=4)


def export(path: Path) -> None:
    export_volume_model(CXRMassMap(), torch.rand((1, 1, 1, 64, 64)), "image", path,
                        output_name="probability")


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else (
        Path(__file__).resolve().parent.parent / "model_repository/cxr_mass_map/1/model.onnx")
    export(target)
    print(f"exported {target} ({target.stat().st_size} bytes)")
