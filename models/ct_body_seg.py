#!/usr/bin/env python3
"""ct_body_seg: a deterministic CT segmentation of body, lungs (air inside the body) and bone.

DEMONSTRATION MODEL, NOT A MEDICAL DEVICE. It uses Hounsfield thresholds and 3-D morphology,
written as a torch module so that it exports to ONNX and runs unchanged in Triton
(``onnxruntime_onnx``) and in-process. Run this file to (re)export
``model_repository/ct_body_seg/1/model.onnx``.

Input ``hu``: float32 [N, 1, D, H, W] in Hounsfield units, H and W divisible by 4 (the
pre-processing pads with air). Output ``labels``: uint8 [N, 1, D, H, W], 0 background, 1 body,
2 lungs, 3 bone (a label map, not probabilities: 35 MB instead of 560 MB over the wire).
Steps, each with an independent numpy/scipy twin in tests/independent.py:

1. air = HU < -500; tissue = not air, opened per slice with a 1x7x7 box, which removes thin
   shells such as the table top and cables so that they do not enclose air; free = not tissue.
2. Outside, per axial slice: geodesic dilation from the in-plane border through ``free``, first
   on a 4x coarser grid (a block is free only if all of it is; 3x3 steps, 80 iterations), then
   6 full-resolution 3x3 steps through ``free`` from the upsampled result.
3. body = not outside, opened in 3-D with a 3x7x7 box.
4. lungs = air inside the body, opened with a 3x3x3 box (drops small gas pockets' edges).
5. bone = HU > 250 inside the body, opened with a 3x3x3 box.
Labels: bone over lungs over body over background.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

AIR_HU = -500.0
BONE_HU = 250.0
COARSE = 4
COARSE_ITERATIONS = 80
FINE_ITERATIONS = 6
LABELS = ("background", "body", "lungs", "bone")


def dilate(mask: torch.Tensor, kernel: tuple[int, int, int]) -> torch.Tensor:
    """Binary dilation with a box (outside the volume counts as 0), one axis at a time."""
    for axis, size in enumerate(kernel):
        if size > 1:
            axis_kernel = tuple(size if a == axis else 1 for a in range(3))
            padding = tuple(size // 2 if a == axis else 0 for a in range(3))
            mask = F.max_pool3d(mask, kernel_size=axis_kernel, stride=1, padding=padding)
    return mask


def erode(mask: torch.Tensor, kernel: tuple[int, int, int]) -> torch.Tensor:
    """Binary erosion with a box (outside the volume counts as 1)."""
    return -dilate(-mask, kernel)


def opening(mask: torch.Tensor, kernel: tuple[int, int, int]) -> torch.Tensor:
    return dilate(erode(mask, kernel), kernel)


def border_seed(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` on the in-plane border ring of every slice, 0 inside."""
    inner = torch.zeros_like(mask[:, :, :, 1:-1, 1:-1])
    ring = F.pad(inner, (1, 1, 1, 1), value=1.0)
    return ring * mask


def flood_from_border(free: torch.Tensor, coarse_iterations: int) -> torch.Tensor:
    """Per slice, what is reachable from the in-plane border through ``free``: geodesic
    dilation on a 4x coarser grid (a block is free only if all of it is; 3x3 steps), then
    ``FINE_ITERATIONS`` full-resolution 3x3 steps from the upsampled result."""
    coarse_free = -F.max_pool3d(-free, kernel_size=(1, COARSE, COARSE),
                                stride=(1, COARSE, COARSE))
    outside = border_seed(coarse_free)
    for _ in range(coarse_iterations):
        outside = dilate(outside, (1, 3, 3)) * coarse_free
    outside = outside.repeat_interleave(COARSE, dim=3).repeat_interleave(COARSE, dim=4)
    outside = torch.maximum(outside * free, border_seed(free))
    for _ in range(FINE_ITERATIONS):
        outside = dilate(outside, (1, 3, 3)) * free
    return outside


class CTBodySeg(nn.Module):
    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        air = (hu < AIR_HU).float()
        free = 1.0 - opening(1.0 - air, (1, 7, 7))
        outside = flood_from_border(free, COARSE_ITERATIONS)  # step 2
        # steps 3-5
        body = opening(1.0 - outside, (3, 7, 7))
        lungs = opening(air * body, (3, 3, 3))
        bone = opening((hu > BONE_HU).float() * body, (3, 3, 3))
        lungs = lungs * (1.0 - bone)
        body = body * (1.0 - lungs) * (1.0 - bone)
        return (body + 2.0 * lungs + 3.0 * bone).to(torch.uint8)


def export_volume_model(model: nn.Module, example: torch.Tensor, input_name: str,
                        path: Path, output_name: str = "labels") -> None:
    """ONNX of a [N, 1, D, H, W] -> ``labels`` [N, C, D, H, W] model, every axis but the
    channel dynamic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model.eval(), (example,), str(path), input_names=[input_name],
        output_names=[output_name],
        dynamic_axes={input_name: {0: "n", 2: "d", 3: "h", 4: "w"},
                      output_name: {0: "n", 2: "d", 3: "h", 4: "w"}},
        opset_version=17, dynamo=False,
    )


def export(path: Path) -> None:
    export_volume_model(CTBodySeg(), torch.full((1, 1, 4, 32, 32), -1000.0), "hu", path)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else (
        Path(__file__).resolve().parent.parent / "model_repository/ct_body_seg/1/model.onnx")
    export(target)
    print(f"exported {target} ({target.stat().st_size} bytes)")
