#!/usr/bin/env python3
"""cxr_mass_cls: a tiny CNN that says whether a chest radiograph holds a synthetic round mass.

DEMONSTRATION MODEL, NOT A MEDICAL DEVICE: it exists so that the classification, triage and
rule-out paths run end to end. Its training and test data are generated here from the shared
real chest radiograph (``../shared/data/cxr/RG1_JLSN.dcm``), reduced to 64 x 64 exactly as the
node's pre-processing does (MONAI ``Resize`` with ``area``, then ``ScaleIntensity`` to [0, 1]):
random shifts, flips, gamma and noise, and in half of the samples one bright disc of 3-6 pixels
radius (at 64 x 64; a tenth to a fifth of the chest) with a soft edge, 0.25-0.5 brighter, inside
the central part of the chest. Training and test use different seeds. Deterministic: fixed
seeds, 2 threads; under a minute on 2 CPU cores.

    .venv/bin/python models/cxr_mass_cls.py [--steps 1500] [--out model_repository/...]

Prints the test accuracy and exports ONNX: input ``image`` float32 [N, 1, 1, 64, 64], output
``logits`` float32 [N, 1] (the node applies the sigmoid: ``ainode_activation``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.imaging.volume import load_series  # noqa: E402

SIZE = 64
SOURCE = ROOT.parent / "shared" / "data" / "cxr" / "RG1_JLSN.dcm"


def base_image() -> NDArray[np.float32]:
    """The shared radiograph as the model sees it (the node's pre-processing)."""
    from monai.transforms.intensity.array import ScaleIntensity
    from monai.transforms.spatial.array import Resize

    volume = load_series([SOURCE])
    small = Resize(spatial_size=(1, SIZE, SIZE), mode="area")(torch.from_numpy(volume.voxels)[None])
    return np.asarray(ScaleIntensity(minv=0.0, maxv=1.0)(small))[0, 0].astype(np.float32)


class Generator:
    def __init__(self, base: NDArray[np.float32], seed: int) -> None:
        self.base = base
        self.rng = np.random.default_rng(seed)
        self.rows, self.cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)

    def sample(self, positive: bool) -> NDArray[np.float32]:
        rng = self.rng
        image = np.roll(self.base, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), (0, 1))
        if rng.random() < 0.5:
            image = image[:, ::-1]
        image = np.clip(image, 0, 1) ** rng.uniform(0.85, 1.2)
        if positive:
            radius = rng.uniform(3.0, 6.0)
            centre = rng.uniform(16, 48, size=2)
            distance = np.hypot(self.rows - centre[0], self.cols - centre[1])
            image = image + rng.uniform(0.25, 0.5) * np.clip(radius + 0.5 - distance, 0, 1)
        image = image + rng.normal(0, 0.02, image.shape)
        return np.clip(image, 0, None).astype(np.float32)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = self.rng.random(size) < 0.5
        images = np.stack([self.sample(bool(p)) for p in labels])
        return (torch.from_numpy(images)[:, None, None],
                torch.from_numpy(labels.astype(np.float32))[:, None])


class MassClassifier(nn.Module):
    """[N, 1, 1, 64, 64] -> one logit per image."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(64, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.features(image.flatten(1, 2))
        pooled = torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)
        return self.head(pooled)


def train(steps: int) -> tuple[MassClassifier, dict[str, float]]:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    base = base_image()
    model = MassClassifier()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    training = Generator(base, seed=1)
    started = time.perf_counter()
    for _ in range(steps):
        images, labels = training.batch(32)
        optimiser.zero_grad()
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimiser.step()
    model.eval()
    test = Generator(base, seed=2)
    images, labels = test.batch(1000)
    with torch.inference_mode():
        probability = torch.sigmoid(model(images))
        clean = torch.sigmoid(model(torch.from_numpy(base)[None, None, None]))
    predicted = probability >= 0.5
    report = {
        "steps": steps,
        "test_samples": 1000,
        "test_accuracy": round(float((predicted == (labels > 0.5)).float().mean()), 4),
        "test_sensitivity": round(float(predicted[labels > 0.5].float().mean()), 4),
        "test_specificity": round(float((~predicted[labels < 0.5]).float().mean()), 4),
        "probability_on_the_unmodified_radiograph": round(float(clean), 4),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    return model, report


def export(model: MassClassifier, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model.eval(), (torch.zeros((1, 1, 1, SIZE, SIZE)),), str(path),
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}},
                      opset_version=17, dynamo=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "model_repository" / "cxr_mass_cls" / "1" / "model.onnx")
    args = parser.parse_args()
    trained, results = train(args.steps)
    export(trained, args.out)
    (args.out.parent.parent / "training.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results))
