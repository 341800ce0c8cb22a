#!/usr/bin/env python3
"""ct_lesion_unet: a small MONAI 3-D UNet that finds synthetic spherical lesions in CT.

DEMONSTRATION MODEL, NOT A MEDICAL DEVICE. Trained on real CT backgrounds (the shared
134-slice abdominal CT) with synthetic lesions inserted at random positions inside the body:
spheres of 4-12 mm radius, 60-120 HU darker or brighter than their surroundings, soft edges,
and noise. Training and evaluation use different seeds (different lesions and positions).
Deterministic: fixed seeds, 2 threads; a few minutes on 2 CPU cores.

    .venv/bin/python models/ct_lesion_unet.py [--iterations 3000] [--out model_repository/...]

Prints the evaluation Dice (lesion class) and exports ONNX: input ``image`` float32
[N, 1, D, H, W] (HU scaled from [-200, 300] to [0, 1], D/H/W multiples of 8), output
``logits`` float32 [N, 2, D, H, W] (background, lesion).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.losses.dice import DiceCELoss
from monai.networks.nets.unet import UNet
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.imaging.volume import load_series  # noqa: E402

PATCH = (16, 64, 64)
HU_RANGE = (-200.0, 300.0)


def network() -> UNet:
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128),
                strides=(2, 2, 2), num_res_units=1)


def scale(hu: NDArray[np.float32]) -> NDArray[np.float32]:
    low, high = HU_RANGE
    return np.clip((hu - low) / (high - low), 0.0, 1.0).astype(np.float32)


class LesionSampler:
    """Patches of the real CT with (or without) one synthetic lesion, and the lesion mask."""

    def __init__(self, hu: NDArray[np.float32], spacing: tuple[float, float, float],
                 seed: int) -> None:
        self.hu = hu
        self.spacing = np.array(spacing)
        self.rng = np.random.default_rng(seed)
        soft = (hu > -100) & (hu < 200)
        d, h, w = hu.shape
        pd, ph, pw = PATCH
        self.centres = np.argwhere(soft[pd // 2:d - pd // 2:2, ph // 2:h - ph // 2:4,
                                        pw // 2:w - pw // 2:4])
        self.centres = self.centres * [2, 4, 4] + [pd // 2, ph // 2, pw // 2]

    def sample(self, with_lesion: bool) -> tuple[NDArray[np.float32], NDArray[np.uint8]]:
        pd, ph, pw = PATCH
        cz, cy, cx = self.centres[self.rng.integers(len(self.centres))]
        z0, y0, x0 = cz - pd // 2, cy - ph // 2, cx - pw // 2
        patch = self.hu[z0:z0 + pd, y0:y0 + ph, x0:x0 + pw].copy()
        mask = np.zeros(PATCH, dtype=np.uint8)
        if with_lesion:
            radius = self.rng.uniform(4.0, 12.0)
            centre = np.array([self.rng.uniform(0.3, 0.7) * n for n in PATCH])
            zz, yy, xx = np.meshgrid(*[np.arange(n) for n in PATCH], indexing="ij")
            distance = np.sqrt(sum(((axis - c) * s) ** 2 for axis, c, s in
                                   zip((zz, yy, xx), centre, self.spacing, strict=True)))
            weight = 1.0 / (1.0 + np.exp((distance - radius) / 0.8))
            contrast = self.rng.uniform(60.0, 120.0) * self.rng.choice([-1.0, 1.0])
            noise = self.rng.normal(0.0, 12.0, PATCH) * weight
            patch = patch + (contrast * weight + noise).astype(np.float32)
            mask = (distance <= radius).astype(np.uint8)
        return scale(patch), mask

    def batch(self, size: int, lesion_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = zip(*(self.sample(self.rng.random() < lesion_rate)
                              for _ in range(size)), strict=True)
        return (torch.from_numpy(np.stack(images)[:, None]),
                torch.from_numpy(np.stack(masks)[:, None].astype(np.int64)))


def dice(prediction: torch.Tensor, truth: torch.Tensor) -> float:
    intersection = float((prediction * truth).sum())
    total = float(prediction.sum() + truth.sum())
    return 2 * intersection / total if total else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/ct-abdomen")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "model_repository/ct_lesion_unet/1/model.onnx")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    volume = load_series(sorted(args.data.glob("*.dcm")))
    train = LesionSampler(volume.voxels, volume.spacing, seed=0)
    evaluation = LesionSampler(volume.voxels, volume.spacing, seed=1)

    model = network()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=args.iterations,
                                                          eta_min=1e-4)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    started = time.perf_counter()
    model.train()
    for iteration in range(1, args.iterations + 1):
        images, masks = train.batch(args.batch, lesion_rate=0.5)
        optimiser.zero_grad()
        loss = loss_function(model(images), masks)
        loss.backward()
        optimiser.step()
        schedule.step()
        if iteration % 100 == 0:
            print(f"iteration {iteration} loss {loss.item():.4f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)

    model.eval()
    scores, false_positive_voxels = [], 0
    with torch.no_grad():
        for _ in range(40):
            images, masks = evaluation.batch(1, lesion_rate=1.0)
            predicted = model(images).argmax(dim=1, keepdim=True)
            scores.append(dice(predicted, masks))
        for _ in range(20):
            images, _masks = evaluation.batch(1, lesion_rate=0.0)
            false_positive_voxels += int(model(images).argmax(dim=1).sum())
    report = {
        "evaluation_dice_median": round(float(np.median(scores)), 4),
        "evaluation_dice_mean": round(float(np.mean(scores)), 4),
        "false_positive_voxels_in_20_lesion_free_patches": false_positive_voxels,
        "iterations": args.iterations,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model, (torch.zeros((1, 1, *PATCH)),), str(args.out), input_names=["image"],
        output_names=["logits"], opset_version=17, dynamo=False,
        dynamic_axes={"image": {0: "n", 2: "d", 3: "h", 4: "w"},
                      "logits": {0: "n", 2: "d", 3: "h", 4: "w"}},
    )
    (args.out.parent.parent / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"exported {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
