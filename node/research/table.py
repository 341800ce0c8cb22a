"""The action for each attribute under a de-identification profile (PS3.15 E.1.1, Table E.1-1).

The basic profile's column comes from dicom-anonymizer's copy of the table (the edition named
by :data:`EDITION`); the options' columns from :mod:`node.research.options`. A compound code
of the table is resolved here to one action, the one that keeps the object conformant with
the least kept: ``X/Z`` and ``Z/D`` -> ``Z`` (a sequence: ``X``, as an empty sequence is
wrong wherever one is optional); ``X/D`` and ``X/Z/D`` -> ``D`` (Device Serial Number, say,
is Type 1 in enhanced objects; a sequence keeps its items, processed in turn); ``X/Z/U*`` ->
``U`` (a sequence: its UIDs replaced). An option's ``K`` wins over its ``C``, either over the
basic profile.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

from node.research.options import OPTION_ACTIONS
from node.settings import DEID_OPTIONS

EDITION = "dicomfields_2026c"  # dicom-anonymizer's Table E.1-1 of DICOM 2026c

_CATEGORIES = {
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z", "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}
_RESOLVED = {"X/Z": "Z", "X/Z/D": "D", "Z/D": "Z", "X/D": "D", "X/Z/U*": "U"}

KEEP, CLEAN, REMOVE, EMPTY, DUMMY, UID = "K", "C", "X", "Z", "D", "U"


@cache
def basic_profile() -> dict[int, str]:
    """Table E.1-1's basic profile column as written (``X/Z/D``...), by tag; the repeating
    groups (curves 50xx, overlays 60xx) are handled by :func:`repeating_group_action`."""
    database = dicom_anonymization_database_selector(EDITION)
    table: dict[int, str] = {}
    for category, code in _CATEGORIES.items():
        for tag in database[category]:
            if len(tag) == 2:
                table[(tag[0] << 16) | tag[1]] = code
    return table


@cache
def actions(options: tuple[str, ...]) -> dict[int, str]:
    """One action per listed attribute (``K C X Z D U``) with ``options`` applied."""
    resolved = {tag: _RESOLVED.get(code, code) for tag, code in basic_profile().items()}
    optional: dict[int, str] = {}
    for option in options:
        for tag, code in OPTION_ACTIONS.get(option, {}).items():
            if optional.get(tag) != KEEP:
                optional[tag] = code
    resolved.update(optional)
    return resolved


def removed_when_a_sequence(tag: int) -> bool:
    """``X/Z`` on a sequence: removed rather than emptied."""
    return basic_profile().get(tag) == "X/Z"


def repeating_group_action(tag: int) -> str | None:
    """Curve data (50xx,xxxx) and overlays (60xx,3000 data; 60xx,4000 comments): ``X``. The
    whole overlay group goes, as an overlay without its data would be incomplete."""
    group = tag >> 16
    if group & 0xFF00 == 0x5000 or (group & 0xFF00 == 0x6000 and group % 2 == 0):
        return REMOVE
    return None


def describe(options: Iterable[str]) -> list[str]:
    """The method as De-identification Method (0012,0063) states it: the profile, then each
    option (one value each, LO)."""
    return ["Basic Application Confidentiality Profile",
            *(DEID_OPTIONS[option][1] for option in options)]
