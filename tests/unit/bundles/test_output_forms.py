"""Issue 24 §5: every form the MONAI bundle metadata schema allows for a segmentation output
is mapped (format ``segmentation`` or ``labels``; one channel per label, or one channel of
label values), and what is not says precisely what is missing. Bundles are built in the test
from the shared spleen bundle's configuration (no weights needed to map)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest

from node.bundles.mapping import map_bundle
from node.bundles.source import open_bundle
from tests.support.bundles import BUNDLES

ARGMAX = {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}


def _bundle(tmp_path: Path, output: dict[str, Any],
            postprocessing: list[dict[str, Any]] | None = None) -> tuple[Any, list[str]]:
    target = tmp_path / "bundle"
    shutil.copytree(BUNDLES / "spleen_ct_segmentation", target)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    metadata = json.loads((target / "configs" / "metadata.json").read_text())
    metadata["network_data_format"]["outputs"]["pred"] = {
        "type": "image", "num_channels": 2, "spatial_shape": [96, 96, 96], "dtype": "float32",
        "value_range": [0, 1], "is_patch_data": False, **output}
    (target / "configs" / "metadata.json").write_text(json.dumps(metadata))
    if postprocessing is not None:
        inference = json.loads((target / "configs" / "inference.json").read_text())
        kept = [t for t in inference["postprocessing"]["transforms"]
                if t["_target_"] not in ("Activationsd", "AsDiscreted")]
        inference["postprocessing"]["transforms"] = postprocessing + kept
        (target / "configs" / "inference.json").write_text(json.dumps(inference))
    with warnings.catch_warnings():  # MONAI's notes on the zoo's older metadata keys
        warnings.filterwarnings("ignore", category=UserWarning, module="monai")
        warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
        return map_bundle(open_bundle(target, tmp_path / "work"))


@pytest.mark.parametrize("fmt", ["segmentation", "labels"])
def test_one_channel_per_label_with_argmax(tmp_path: Path, fmt: str) -> None:
    contract, reasons = _bundle(tmp_path, {"format": fmt,
                                           "channel_def": {"0": "background", "1": "spleen"}})
    assert reasons == []
    assert contract.labels == ["background", "spleen"]
    assert contract.output_kind == "probabilities"


@pytest.mark.parametrize("fmt", ["segmentation", "labels"])
def test_one_channel_of_label_values(tmp_path: Path, fmt: str) -> None:
    contract, reasons = _bundle(
        tmp_path, {"format": fmt, "num_channels": 1,
                   "channel_def": {"0": "background", "1": "liver", "2": "liver tumor"}},
        postprocessing=[])
    assert reasons == [], reasons
    assert contract.labels == ["background", "liver", "liver tumor"]
    assert contract.output_kind == "labels"


def test_independent_masks_are_refused_saying_why(tmp_path: Path) -> None:
    _, reasons = _bundle(
        tmp_path, {"format": "segmentation", "num_channels": 3,
                   "channel_def": {"0": "tumor core", "1": "whole tumor",
                                   "2": "enhancing tumor"}},
        postprocessing=[{"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                        {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}])
    assert any("independent masks" in r and "tumor core, whole tumor, enhancing tumor" in r
               for r in reasons), reasons
    assert not any("AsDiscreted other than argmax" in r for r in reasons)


@pytest.mark.parametrize(("output", "expected"), [
    ({"format": "classification", "channel_def": {"0": "a", "1": "b"}},
     "output format 'classification': only segmentation bundles"),
    ({"format": "segmentation"}, "has no channel_def: name each label"),
    ({"format": "labels", "spatial_shape": [1, 2], "channel_def": {"0": "a", "1": "b"}},
     "output format 'labels' with spatial_shape [1, 2] (the input's [96, 96, 96]): not a "
     "label per voxel"),
    ({"format": "labels", "channel_def": {"0": "background", "2": "kidney"}},
     "must name channels 0..N-1 (0 the background); it names 0, 2"),
    ({"format": "segmentation", "num_channels": 3,
      "channel_def": {"0": "background", "1": "spleen"}},
     "num_channels 3 but channel_def names 2"),
    ({"format": "segmentation", "channel_def": {"zero": "background", "one": "spleen"}},
     "channel_def keys are not channel numbers or label values: zero, one"),
])
def test_what_is_missing_is_said(tmp_path: Path, output: dict[str, Any], expected: str) -> None:
    _, reasons = _bundle(tmp_path, output, postprocessing=[ARGMAX])
    assert any(expected in r for r in reasons), reasons
