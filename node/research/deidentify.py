"""De-identify one dataset in place (PS3.15 Annex E, Basic Application Level Confidentiality
Profile with the options chosen; actions from :mod:`node.research.table`).

Every attribute of Table E.1-1 gets its action at every depth (sequences are recursed);
private attributes are removed unless allow-listed (``keep_private``); curves and overlays
go. Pseudonyms (:mod:`node.research.pseudonym`) make the result reproducible: UIDs map to
the same pseudonym wherever they occur, so references between the exported objects (a SEG's
source images, an SR's evidence) still resolve. Free text that is kept (unlisted attributes,
cleaned descriptors) loses any of the patient's identifying values it repeats. Pixel data
and the transfer syntax are left as they are. An image with Burned In Annotation (0028,0301)
YES is refused: text burned into the pixels is not removed (no Clean Pixel Data option).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from pydicom import Dataset, Sequence
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from node.research import table
from node.research.pseudonym import Pseudonyms, shift_date, shift_datetime
from node.settings import DEID_OPTIONS

_TEXT_VRS = {"LO", "LT", "SH", "ST", "UT", "UC", "PN"}
_NUMBER_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}
_BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
DUMMY = "ANONYMIZED"
_SCRUBBED_VRS = _TEXT_VRS | {"DA", "DT", "AE"}  # values looked for in kept text
REDACTED = "***"
_CODES = {"basic": ("113100", "Basic Application Confidentiality Profile")}


class BurnedInAnnotation(Exception):
    """The image says identifying text may be burned into its pixels."""


@dataclass(frozen=True)
class Profile:
    """The options in effect and the private attributes kept ('GGGG,CREATOR,EE')."""

    options: tuple[str, ...] = ()
    keep_private: tuple[str, ...] = ()
    _allowed: frozenset[tuple[int, str, int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        allowed = set()
        for entry in self.keep_private:
            group, creator, element = entry.split(",", 2)
            allowed.add((int(group, 16), creator.strip(), int(element, 16)))
        object.__setattr__(self, "_allowed", frozenset(allowed))

    @property
    def actions(self) -> dict[int, str]:
        return table.actions(self.options)

    def keeps_private(self, group: int, creator: str, offset: int) -> bool:
        return (group, creator.strip(), offset) in self._allowed

    @property
    def stated_options(self) -> tuple[str, ...]:
        """The options as the object states them: an allow-list is Retain Safe Private."""
        if self.keep_private and "retain_safe_private" not in self.options:
            return (*self.options, "retain_safe_private")
        return self.options

    @property
    def temporal(self) -> str:
        """Longitudinal Temporal Information Modified (0028,0303)."""
        if "retain_longitudinal_full_dates" in self.options:
            return "UNMODIFIED"
        if "retain_longitudinal_modified_dates" in self.options:
            return "MODIFIED"
        return "REMOVED"


def refuse_burned_in(dataset: Dataset) -> None:
    if str(dataset.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        raise BurnedInAnnotation("Burned In Annotation is YES: identifying text may be burned "
                                 "into the pixels, which de-identification does not remove")


def patient_key(dataset: Dataset) -> str:
    """What identifies the patient for pseudonyms: Patient ID with its issuer (the study when
    there is no ID, so nothing is linked by accident)."""
    patient_id = str(dataset.get("PatientID", "") or "").strip()
    if not patient_id:
        return "study:" + str(dataset.get("StudyInstanceUID", ""))
    return f"{dataset.get('IssuerOfPatientID', '') or ''}|{patient_id}"


def deidentify(dataset: Dataset, profile: Profile, pseudonyms: Pseudonyms) -> Dataset:
    """``dataset`` de-identified in place (and returned); raises :class:`BurnedInAnnotation`."""
    refuse_burned_in(dataset)
    key = patient_key(dataset)
    walker = _Walker(profile, pseudonyms, key, _identifying_values(dataset, profile.actions))
    walker.walk(dataset)
    pseudonym = pseudonyms.patient(key)
    dataset.PatientName = pseudonym
    dataset.PatientID = pseudonym
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = table.describe(profile.stated_options)
    dataset.DeidentificationMethodCodeSequence = _method_codes(profile.stated_options)
    dataset.LongitudinalTemporalInformationModified = profile.temporal
    meta = getattr(dataset, "file_meta", None)
    if meta is not None:
        if "SOPInstanceUID" in dataset:
            meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        for keyword in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                        "ReceivingApplicationEntityTitle", "PrivateInformationCreatorUID",
                        "PrivateInformation"):
            if keyword in meta:
                delattr(meta, keyword)
    return dataset


def _method_codes(options: Iterable[str]) -> Sequence:
    items = []
    for value, meaning in [_CODES["basic"], *(DEID_OPTIONS[o] for o in options)]:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    return Sequence(items)


def _identifying_values(dataset: Dataset, actions: dict[int, str]) -> list[str]:
    """The values, at any depth, of the listed attributes the profile neither keeps nor
    cleans (a name's parts too), longest first: kept text must not repeat them."""
    values: set[str] = set()
    for element in _elements(dataset):
        if actions.get(int(element.tag)) in (None, table.KEEP, table.CLEAN) or \
                element.VR not in _SCRUBBED_VRS or element.value in (None, ""):
            continue
        texts = element.value if element.VM > 1 else [element.value]
        for text in texts:
            text = str(text).strip()
            values.add(text)
            if element.VR == "PN":
                values.update(part for part in re.split(r"[\^=\s,]+", text) if len(part) >= 3)
    return sorted((v for v in values if len(v) >= 4 or (v.isalpha() and len(v) >= 3)),
                  key=len, reverse=True)


def _elements(dataset: Dataset) -> Iterator[DataElement]:
    for element in dataset:
        yield element
        if element.VR == "SQ":
            for item in element.value:
                yield from _elements(item)


@dataclass
class _Walker:
    profile: Profile
    pseudonyms: Pseudonyms
    patient: str
    identifying: list[str]

    def __post_init__(self) -> None:
        self._actions = self.profile.actions
        self._offset = self.pseudonyms.date_offset(self.patient)
        self._scrub = (re.compile("|".join(re.escape(v) for v in self.identifying), re.I)
                       if self.identifying else None)

    def walk(self, dataset: Dataset) -> None:
        for element in list(dataset):
            tag = element.tag
            if tag.is_private:
                if not self._private_kept(dataset, tag):
                    del dataset[tag]
                continue
            action = self._actions.get(int(tag)) or table.repeating_group_action(int(tag))
            if action is None:
                self._unlisted(element)
            else:
                self._apply(dataset, element, action)

    def _walk_items(self, element: DataElement) -> None:
        """A sequence kept: each of its items processed in turn."""
        for item in element.value:
            self.walk(item)

    def _private_kept(self, dataset: Dataset, tag: BaseTag) -> bool:
        if tag.is_private_creator:
            creator = str(dataset[tag].value)
            return any(self.profile.keeps_private(tag.group, creator, offset)
                       for offset in range(256))
        creator_tag = Tag(tag.group, tag.element >> 8)
        if creator_tag not in dataset:
            return False
        creator = str(dataset[creator_tag].value)
        return self.profile.keeps_private(tag.group, creator, tag.element & 0xFF)

    def _unlisted(self, element: DataElement) -> None:
        """Not in Table E.1-1: kept; its sequences recursed, its text scrubbed."""
        if element.VR == "SQ":
            self._walk_items(element)
        elif element.VR in _TEXT_VRS:
            self._clean_text(element)

    def _apply(self, dataset: Dataset, element: DataElement, action: str) -> None:
        if action == table.REMOVE:
            del dataset[element.tag]
        elif action == table.KEEP:
            if element.VR == "SQ":
                self._walk_items(element)
        elif action == table.EMPTY:
            if element.VR != "SQ":
                element.value = None
            elif table.removed_when_a_sequence(int(element.tag)):
                del dataset[element.tag]
            else:
                element.value = Sequence()
        elif action == table.UID:
            self._uid(element)
        elif action == table.DUMMY:
            self._dummy(element)
        else:  # CLEAN
            self._clean(element)

    def _uid(self, element: DataElement) -> None:
        if element.VR == "SQ":  # X/Z/U*: the references kept, their UIDs replaced
            self._walk_items(element)
        elif element.VR == "UI":
            element.value = self._map(element.value, self.pseudonyms.uid)
        else:
            element.value = None

    def _dummy(self, element: DataElement) -> None:
        vr = element.VR
        if vr == "SQ":
            self._walk_items(element)
        elif vr == "UI":
            element.value = self._map(element.value, self.pseudonyms.uid)
        elif vr == "DA":
            element.value = "19000101"
        elif vr == "DT":
            element.value = "19000101000000"
        elif vr == "TM":
            element.value = "000000"
        elif vr == "AS":
            element.value = "000D"
        elif vr in ("IS", "DS"):
            element.value = "0"
        elif vr in _NUMBER_VRS or vr in ("AT",):
            element.value = 0
        elif vr in _BINARY_VRS:
            element.value = b"\0\0"
        else:  # text, CS, AE, UR
            element.value = DUMMY

    def _clean(self, element: DataElement) -> None:
        vr = element.VR
        if vr == "SQ":
            self._walk_items(element)
        elif vr == "DA":
            element.value = self._map(element.value, lambda v: shift_date(v, self._offset))
        elif vr == "DT":
            element.value = self._map(element.value, lambda v: shift_datetime(v, self._offset))
        elif vr == "TM":
            pass  # times of day stay with modified dates
        elif vr == "UI":
            element.value = self._map(element.value, self.pseudonyms.uid)
        elif vr in _TEXT_VRS or vr in ("CS", "AE", "UR"):
            self._clean_text(element)
        else:
            element.value = None

    def _clean_text(self, element: DataElement) -> None:
        if self._scrub is None or element.value is None:
            return
        scrub = self._scrub
        element.value = self._map(element.value, lambda v: scrub.sub(REDACTED, str(v)))

    @staticmethod
    def _map(value: object, change: Callable[[str], str]) -> object:
        """``change`` applied to each value of a (multi-valued) element."""
        if value is None or value == "":
            return value
        if isinstance(value, (list, tuple, MultiValue)):
            return [change(str(v)) for v in value]
        return change(str(value))
