"""SEG/SR codes for label names that bundles commonly use (SNOMED CT, PS3.16 CID 7150/7151/4031).

A label not in this table needs ``--codes FILE`` (YAML, the shape of a pipeline's
``segments``). Names are matched case-insensitively with spaces and dashes as underscores.
"""

from __future__ import annotations

from typing import Any

ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
TISSUE = ("SCT", "85756007", "Tissue")

# label -> (SNOMED CT code, meaning, sRGB colour)
_STRUCTURES: dict[str, tuple[str, str, tuple[int, int, int]]] = {
    "spleen": ("78961009", "Spleen", (157, 108, 162)),
    "liver": ("10200004", "Liver", (221, 130, 101)),
    "kidney": ("64033007", "Kidney", (185, 102, 83)),
    "kidney_right": ("9846003", "Right kidney", (185, 102, 83)),
    "kidney_left": ("18639004", "Left kidney", (185, 102, 83)),
    "gallbladder": ("28231008", "Gallbladder", (139, 150, 98)),
    "stomach": ("69695003", "Stomach", (216, 132, 105)),
    "pancreas": ("15776009", "Pancreas", (249, 180, 111)),
    "aorta": ("15825003", "Aorta", (224, 97, 76)),
    "inferior_vena_cava": ("64131007", "Inferior vena cava", (0, 151, 206)),
    "esophagus": ("32849002", "Esophagus", (211, 171, 143)),
    "trachea": ("44567001", "Trachea", (182, 228, 255)),
    "duodenum": ("38848004", "Duodenum", (255, 253, 229)),
    "colon": ("71854001", "Colon", (204, 168, 143)),
    "small_bowel": ("30315005", "Small intestine", (205, 167, 142)),
    "urinary_bladder": ("89837001", "Urinary bladder", (222, 154, 132)),
    "bladder": ("89837001", "Urinary bladder", (222, 154, 132)),
    "lung": ("39607008", "Lung", (197, 165, 145)),
    "lung_right": ("3341006", "Right lung", (197, 165, 145)),
    "lung_left": ("44029006", "Left lung", (197, 165, 145)),
    "heart": ("80891009", "Heart", (206, 110, 84)),
    "brain": ("12738006", "Brain", (250, 250, 225)),
    "prostate": ("41216001", "Prostate", (230, 158, 140)),
    "bone": ("272673000", "Bone", (241, 214, 145)),
}


def _key(label: str) -> str:
    return label.strip().lower().replace(" ", "_").replace("-", "_")


def known_codes(label: str) -> dict[str, Any] | None:
    """The ``segments`` entry for a common label name, or None."""
    found = _STRUCTURES.get(_key(label))
    if found is None:
        return None
    value, meaning, color = found
    return {"category": list(ANATOMICAL_STRUCTURE), "type": ["SCT", value, meaning],
            "color": list(color)}
