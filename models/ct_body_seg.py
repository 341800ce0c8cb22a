#!/usr/bin/env python3
"""ct_body_seg: a deterministic CT segmentation of the body, the gas inside it and dense matter.

DEMONSTRATION MODEL, NOT A MEDICAL DEVICE. It uses Hounsfield thresholds and 3-D morphology,
written as a torch module so that it exports to ONNX and runs unchanged in Triton
(``onnxruntime_onnx``) and in-process. Run this file to (re)export
``model_repository/ct_body_seg/1/model.onnx``.

Input ``hu``: float32 [N, 1, D, H, W] in Hounsfield units, H and W divisible by 4 (the
pre-processing pads with air). Output ``labels``: uint8 [N, 1, D, H, W], 0 background, 1 body,
2 gas, 3 dense (a label map, not probabilities: 35 MB instead of 560 MB over the wire).

The labels say what thresholds can tell, nothing more: "gas" is all air or gas inside the body
(lungs, airways and bowel gas alike; coded as the substance Gas, not as Lung), "dense" is
everything above 250 HU inside the body (bone, calcifications and iodinated contrast in vessels
and the heart alike; coded as a Substance, not as Bone), "body" is the patient without the couch
and its pads (the parts not connected to the body's thick core are dropped, step 4).
Steps, each with an independent numpy/scipy twin in tests/independent.py:

1. air = HU < -500; tissue = not air, opened per slice with a 1x7x7 box, which removes thin
   shells such as the table top and cables so that they do not enclose air; free = not tissue.
2. Outside, per axial slice: geodesic dilation from the in-plane border through ``free``, first
   on a 4x coarser grid (a block is free only if all of it is; 3x3 steps, 80 iterations), then
   6 full-resolution 3x3 steps through ``free`` from the upsampled result.
3. body = not outside, opened in 3-D with a 3x7x7 box.
4. Only what is connected to the body's core: on the 4x coarser grid (a block is body only if
   all of it is), core = body eroded per slice with a 1x7x7 box (28 mm thick at 1 mm pixels);
   30 geodesic 3x3x3 steps from the core through the coarse body, upsampled, then 6
   full-resolution 1x3x3 steps through body. The couch's edges and pads beside the patient
   are thinner than the core and not connected to it, so they are not body.
5. gas = air inside the body, opened with a 3x3x3 box (drops small gas pockets' edges).
6. dense = HU > 250 inside the body, opened with a 3x3x3 box.
Labels: dense over gas over body over background.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

AIR_HU = -500.0
DENSE_HU = 250.0
COARSE = 4
COARSE_ITERATIONS = 80
CORE_BOX = 7
CORE_ITERATIONS = 30
FINE_ITERATIONS = 6
LABELS = ("background", "body", "gas", "dense")


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


def coarse(mask: torch.Tensor) -> torch.Tensor:
    """The 4x coarser grid in-plane: a block is 1 only if all of it is."""
    return -F.max_pool3d(-mask, kernel_size=(1, COARSE, COARSE), stride=(1, COARSE, COARSE))


def fine(mask: torch.Tensor) -> torch.Tensor:
    return mask.repeat_interleave(COARSE, dim=3).repeat_interleave(COARSE, dim=4)


def geodesic(seed: torch.Tensor, within: torch.Tensor, kernel: tuple[int, int, int],
             iterations: int) -> torch.Tensor:
    for _ in range(iterations):
        seed = dilate(seed, kernel) * within
    return seed


def flood_from_border(free: torch.Tensor, coarse_iterations: int) -> torch.Tensor:
    """Per slice, what is reachable from the in-plane border through ``free``: geodesic
    dilation on a 4x coarser grid (3x3 steps), then ``FINE_ITERATIONS`` full-resolution 3x3
    steps from the upsampled result."""
    coarse_free = coarse(free)
    outside = geodesic(border_seed(coarse_free), coarse_free, (1, 3, 3), coarse_iterations)
    outside = torch.maximum(fine(outside) * free, border_seed(free))
    return geodesic(outside, free, (1, 3, 3), FINE_ITERATIONS)


def connected_to_core(body: torch.Tensor) -> torch.Tensor:
    """Step 4: the parts of ``body`` reached from its thick core (couch and pads dropped)."""
    coarse_body = coarse(body)
    core = erode(coarse_body, (1, CORE_BOX, CORE_BOX))
    kept = geodesic(core, coarse_body, (3, 3, 3), CORE_ITERATIONS)
    return geodesic(fine(kept) * body, body, (1, 3, 3), FINE_ITERATIONS)


class CTBodySeg(nn.Module):
    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        air = (hu < AIR_HU).float()
        free = 1.0 - opening(1.0 - air, (1, 7, 7))
        outside = flood_from_border(free, COARSE_ITERATIONS)  # step 2
        body = connected_to_core(opening(1.0 - outside, (3, 7, 7)))  # steps 3-4
        gas = opening(air * body, (3, 3, 3))  # step 5
        dense = opening((hu > DENSE_HU).float() * body, (3, 3, 3))  # step 6
        gas = gas * (1.0 - dense)
        body = body * (1.0 - gas) * (1.0 - dense)
        return (body + 2.0 * gas + 3.0 * dense).to(torch.uint8)


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
