#!/usr/bin/env python3
"""wsi_stain_density: how densely each tile of a slide is stained with haematoxylin.

DEMONSTRATION MODEL, NOT A MEDICAL DEVICE: it exists so that the whole-slide path (tiles in,
annotations, SEG and SR out) runs end to end on real stained slides. No training: the network
is colour deconvolution with fixed weights (Ruifrok & Johnston, Anal Quant Cytol Histol 2001,
the H&E-DAB stain matrix scikit-image's ``rgb2hed`` uses), then a soft threshold:

1. optical density per pixel: ``-ln(max(rgb, 1e-6))`` (rgb in [0, 1]);
2. haematoxylin = the OD projected on the haematoxylin row of the inverse stain matrix, scaled
   by ``1 / -ln(1e-6)`` and clipped at 0, exactly as ``skimage.color.rgb2hed``'s first channel;
3. density = its mean over the tile;
4. three class scores (softmax by the node: ``ainode_activation``): ``sparse`` below 0.015,
   ``moderate`` between, ``dense`` above 0.025, steepness 400 per unit of density.

    .venv/bin/python models/wsi_stain_density.py [--out PATH]

Input ``tiles`` float32 [N, 3, 64, 64] (RGB in [0, 1]), output ``scores`` float32 [N, 3].
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
# rgb -> stains matrix of scikit-image (skimage.color.colorconv.hed_from_rgb), column 0 = H
HED_FROM_RGB = np.linalg.inv(np.array([[0.65, 0.70, 0.29],
                                       [0.07, 0.99, 0.11],
                                       [0.27, 0.57, 0.78]]))
LOG_ADJUST = -np.log(1e-6)
SPARSE_BELOW, DENSE_ABOVE, STEEPNESS = 0.015, 0.025, 400.0


class StainDensity(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        weights = torch.tensor(HED_FROM_RGB[:, 0] / LOG_ADJUST, dtype=torch.float32)
        self.register_buffer("haematoxylin", weights.view(1, 3, 1, 1))

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        density_od = -torch.log(torch.clamp(tiles, min=1e-6))
        haematoxylin = torch.relu((density_od * self.haematoxylin).sum(dim=1))
        density = haematoxylin.mean(dim=(1, 2))
        return torch.stack([STEEPNESS * (SPARSE_BELOW - density), torch.zeros_like(density),
                            STEEPNESS * (density - DENSE_ABOVE)], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=ROOT / "model_repository/wsi_stain_density/1/model.onnx")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model = StainDensity().eval()
    example = torch.rand(2, 3, 64, 64)
    torch.onnx.export(model, (example,), str(args.out), input_names=["tiles"],
                      output_names=["scores"], dynamic_axes={"tiles": {0: "n"}, "scores": {0: "n"}},
                      opset_version=17, dynamo=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
