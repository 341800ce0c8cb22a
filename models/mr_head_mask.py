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
import torch.nn.functional as F
from ct_body_seg import border_seed, dilate, opening
from torch import nn

THRESHOLD_FRACTION = 0.25
COARSE = 4
COARSE_ITERATIONS = 40
FINE_ITERATIONS = 6
LABELS = ("background", "head")


class MRHeadMask(nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean = image.mean()
        bright = (image > mean).float()
        level = (image * bright).sum() / bright.sum().clamp(min=1.0)
        tissue = opening((image > THRESHOLD_FRACTION * level).float(), (1, 5, 5))
        free = 1.0 - tissue
        coarse_free = -F.max_pool3d(-free, kernel_size=(1, COARSE, COARSE),
                                    stride=(1, COARSE, COARSE))
        outside = border_seed(coarse_free)
        for _ in range(COARSE_ITERATIONS):
            outside = dilate(outside, (1, 3, 3)) * coarse_free
        outside = outside.repeat_interleave(COARSE, dim=3).repeat_interleave(COARSE, dim=4)
        outside = torch.maximum(outside * free, border_seed(free))
        for _ in range(FINE_ITERATIONS):
            outside = dilate(outside, (1, 3, 3)) * free
        head = opening(1.0 - outside, (1, 5, 5))
        return head.to(torch.uint8)


def export(path: Path) -> None:
    model = MRHeadMask().eval()
    example = torch.zeros((1, 1, 4, 32, 32))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model, (example,), str(path), input_names=["image"], output_names=["labels"],
        dynamic_axes={"image": {0: "n", 2: "d", 3: "h", 4: "w"},
                      "labels": {0: "n", 2: "d", 3: "h", 4: "w"}},
        opset_version=17, dynamo=False,
    )


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else (
        Path(__file__).resolve().parent.parent / "model_repository/mr_head_mask/1/model.onnx")
    export(target)
    print(f"exported {target} ({target.stat().st_size} bytes)")
