"""Shadow runs compared with their live pipeline, per series revision: for each label of a
label map the Dice coefficient of the two masks and the volume difference (shadow - live,
ml); for each finding of a classification or heatmap whether both say present or absent
alike and the probability difference (shadow - live). ``agreement``: the share of labels and
findings whose presence both results state alike. A summary per shadow pipeline: series
compared, median Dice per label, agreement rate per label or finding."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from node.store.shadow import Comparison


def _labels(summary: dict[str, Any]) -> Any:
    folder = summary.get("result_dir")
    path = Path(folder) / "labels.npy" if folder else None
    return np.load(path) if path is not None and path.is_file() else None


def compare(live: dict[str, Any], shadow: dict[str, Any]) -> dict[str, Any]:
    """The comparison of two job summaries (their ``labels`` findings, and the label maps in
    their result folders)."""
    live_map, shadow_map = _labels(live), _labels(shadow)
    same_grid = (live_map is not None and shadow_map is not None
                 and live_map.shape == shadow_map.shape)
    labels: dict[str, Any] = {}
    found: dict[str, Any] = {}
    agreeing = []
    for name, seen in (live.get("labels") or {}).items():
        other = (shadow.get("labels") or {}).get(name)
        if other is None:
            continue
        agree = bool(seen.get("present")) == bool(other.get("present"))
        agreeing.append(agree)
        if seen.get("probability") is not None and other.get("probability") is not None:
            found[name] = {"agree": agree, "probability_difference": round(
                float(other["probability"]) - float(seen["probability"]), 4)}
            continue
        entry: dict[str, Any] = {"agree": agree}
        if same_grid and name in live.get("label_values", {}) \
                and name in shadow.get("label_values", {}):
            a = live_map == live["label_values"][name]
            b = shadow_map == shadow["label_values"][name]
            total = int(a.sum()) + int(b.sum())
            entry["dice"] = round(2 * int((a & b).sum()) / total, 4) if total else 1.0
        if seen.get("volume_ml") is not None and other.get("volume_ml") is not None:
            entry["volume_difference_ml"] = round(
                float(other["volume_ml"]) - float(seen["volume_ml"]), 3)
        labels[name] = entry
    return {"labels": labels, "findings": found,
            "agreement": round(sum(agreeing) / len(agreeing), 4) if agreeing else None,
            "live_version": live.get("model_version"),
            "shadow_version": shadow.get("model_version")}


def summarise(comparisons: Sequence[Comparison]) -> dict[str, Any]:
    """Per shadow pipeline: series compared, median Dice per label, agreement rate per label
    or finding and overall."""
    by_pipeline: dict[str, list[Comparison]] = {}
    for comparison in comparisons:
        by_pipeline.setdefault(comparison.pipeline, []).append(comparison)
    summary = {}
    for pipeline, items in by_pipeline.items():
        dice: dict[str, list[float]] = {}
        agree: dict[str, list[bool]] = {}
        for item in items:
            for name, entry in {**item.comparison.get("labels", {}),
                                **item.comparison.get("findings", {})}.items():
                agree.setdefault(name, []).append(bool(entry.get("agree")))
                if entry.get("dice") is not None:
                    dice.setdefault(name, []).append(float(entry["dice"]))
        overall = [a for values in agree.values() for a in values]
        summary[pipeline] = {
            "live_pipeline": items[-1].live_pipeline,
            "series_compared": len(items),
            "median_dice": {n: round(statistics.median(v), 4) for n, v in dice.items()},
            "agreement_rate": {n: round(sum(v) / len(v), 4) for n, v in agree.items()},
            "overall_agreement": round(sum(overall) / len(overall), 4) if overall else None,
        }
    return summary
