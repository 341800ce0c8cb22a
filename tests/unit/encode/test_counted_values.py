"""The SEG's segments come from the findings' own counts when they carry them
(node.encode.outputs.counted_values), and those are the labels present in the map."""

from __future__ import annotations

import numpy as np

from node.domain import Finding
from node.encode.common import count_labels, present_labels
from node.encode.outputs import counted_values

NAMES = ("background", "liver", "spleen", "kidney", "lesion")


def _findings(labels: np.ndarray) -> dict[str, Finding]:
    counts = count_labels(labels, len(NAMES))
    return {name: Finding(present=counts[value] > 10, volume_ml=counts[value] * 0.001,
                          voxels=counts[value])
            for value, name in enumerate(NAMES) if value > 0}


def test_the_counted_values_are_the_labels_present_in_the_map_small_ones_included() -> None:
    labels = np.zeros((4, 16, 16), dtype=np.uint8)
    labels[0, :8, :8] = 1
    labels[2, 5, 5] = 4  # one voxel: not a present finding, still a segment
    findings = _findings(labels)
    assert not findings["lesion"].present
    assert counted_values(NAMES, findings) == present_labels(labels, NAMES) == [1, 4]


def test_a_radiographs_pixel_counts_serve_too() -> None:
    findings = {name: Finding(present=value == 2, pixels=5 if value == 2 else 0)
                for value, name in enumerate(NAMES) if value > 0}
    assert counted_values(NAMES, findings) == [2]


def test_without_a_count_for_every_label_the_map_is_counted() -> None:
    findings = {"liver": Finding(present=True, voxels=3), "spleen": Finding(present=False)}
    assert counted_values(NAMES, findings) is None
