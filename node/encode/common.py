"""What every object the node writes shares: deterministic UIDs and the equipment identity.

UIDs derive from (model name + version, source series UID, source instance UIDs, output kind),
so re-running a series yields the same Series/SOP Instance UIDs and the PACS keeps one copy.
The algorithm is identified as the processing equipment (IHE AI Results, Contributing
Equipment Sequence, PS3.3 C.7.5.2) and in each SEG segment / SR group (TID 4019).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.sr.codedict import codes

from node import __version__

MANUFACTURER = "ainode"
BANNER = "AI RESULT - NOT FOR PRIMARY DIAGNOSIS"
NOTICE = "not for primary diagnosis"
UID_NAMESPACE = uuid.UUID("5b0b6a3e-6f3c-5d7e-9a51-a1c0de0a1de0")  # ainode's, for uuid5


def warm_up() -> None:
    """Load what highdicom reads on its first object in a process: the standard's IOD, module
    and attribute tables (JSON, ~0.55 s), so a worker does it when it starts, not inside the
    first job's encoding. They are private to highdicom: if they move, this does nothing."""
    try:
        from highdicom import _standard_utils as standard
    except ImportError:  # pragma: no cover - a highdicom that reorganised its modules
        return
    for table in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map"):
        load = getattr(standard, table, None)
        if callable(load):
            load()


def name_uid(*parts: str) -> str:
    """A UID that is the same for the same ``parts``: a name-based (SHA-1) UUID as a ``2.25.``
    UID (PS3.5 B.2)."""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, chr(10).join(parts)).int}"


@dataclass(frozen=True)
class Provenance:
    """Where a result comes from: the model, and the exact source images."""

    model_name: str
    model_version: str
    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]
    device_ae_title: str = "AINODE"
    revision: int = 1  # of the source series (a series re-sent with more images: 2, 3 ...)
    model_digest: str = ""  # SHA-256 of the model's files (node.jobs.provenance)

    def uid(self, kind: str) -> str:
        """A UID that is the same whenever the same model sees the same images."""
        digest = hashlib.sha256("\n".join(sorted(self.sop_instance_uids)).encode()).hexdigest()
        return name_uid(self.model_name, self.model_version, self.series_instance_uid, digest,
                        kind)

    @property
    def software_versions(self) -> list[str]:
        return [f"ainode {__version__}", f"{self.model_name} {self.model_version}"]

    @property
    def description(self) -> str:
        return f"AI {self.model_name} {self.model_version}"[:64]

    def series_description(self, kind: str) -> str:
        """What a viewer lists for the result's series: the model, its version, the kind and
        that it is not for primary diagnosis; the notice and the version are kept whole within
        the 64 characters of LO (a long model name is cut instead, ending in "~"; it is whole
        in the equipment and the algorithm identification)."""
        revision = f" rev {self.revision}" if self.revision > 1 else ""
        tail = f" {self.model_version} {kind}{revision}, {NOTICE}"
        name = self.model_name
        room = 64 - len(tail) - len("AI ")
        if len(name) > room:
            name = name[:max(room - 1, 0)] + "~"
        return f"AI {name}{tail}"[-64:]  # an absurdly long version: the notice still whole

    def algorithm(self) -> hd.AlgorithmIdentificationSequence:
        """The SEG's Algorithm Identification (PS3.3 C.8.20.2), its parameters naming the
        digest of the model's files."""
        return hd.AlgorithmIdentificationSequence(
            name=self.model_name,
            version=self.model_version,
            family=codes.cid7162.ArtificialIntelligence,
            source=MANUFACTURER,
            parameters={"model_sha256": self.model_digest} if self.model_digest else None,
        )

    def sr_algorithm(self) -> hd.sr.AlgorithmIdentification:
        """TID 4019 Algorithm Identification for the SR's measurements: name, version and, as
        an Algorithm Parameter, the digest of the model's files."""
        parameters = [f"model_sha256={self.model_digest}"] if self.model_digest else None
        return hd.sr.AlgorithmIdentification(self.model_name, self.model_version, parameters)

    def instance_attributes(self, kind: str) -> dict[str, Any]:
        """What every result object of ``kind`` (seg, sr, sc) says about itself and its
        maker: deterministic UIDs, series number, equipment (highdicom keyword arguments)."""
        return {
            "series_instance_uid": self.uid(f"{kind}-series"),
            "series_number": series_number(kind, self.revision),
            "sop_instance_uid": self.uid(kind),
            "instance_number": 1,
            "manufacturer": MANUFACTURER,
            "series_description": self.series_description(kind.upper()),
            "contributing_equipment": [self.equipment()],
        }

    def device_attributes(self) -> dict[str, Any]:
        """Equipment attributes SEG and SR take (the SC constructor has no such fields)."""
        return {
            "manufacturer_model_name": self.model_name,
            "software_versions": self.software_versions,
            "device_serial_number": self.device_ae_title,
        }

    def equipment(self) -> hd.ContributingEquipment:
        return hd.ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=self.model_name,
            software_versions=self.software_versions,
            device_serial_number=self.device_ae_title,
            contribution_description=f"{self.model_name} {self.model_version}",
        )


def count_labels(labels: NDArray[np.uint8], count: int) -> list[int]:
    """Voxels per label value 0..count-1 (one compare per label: np.bincount would first
    widen the whole uint8 map to int64, ~30x slower on a CT)."""
    return [int(np.count_nonzero(labels == value)) for value in range(count)]


def present_labels(labels: NDArray[np.uint8], label_names: tuple[str, ...]) -> list[int]:
    """Label values (> 0) that occur in the map, ascending."""
    counts = count_labels(labels, len(label_names))
    return [value for value in range(1, len(label_names)) if counts[value] > 0]


def series_number(kind: str, revision: int = 1) -> int:
    """Series numbers that sort the results after the source in viewers and tell the
    results of each revision of the source apart: 9001-9004 for the first (SEG, SR, SC, ANN),
    9011-9013 for the second, and so on."""
    return {"seg": 9001, "sr": 9002, "sc": 9003, "ann": 9004}[kind] + 10 * (max(revision, 1) - 1)


def stamp_series_created(dataset: Dataset, when: dt.datetime) -> None:
    """Series Date and Time (PS3.3 C.7.3.1, Type 3): when this result series was made."""
    dataset.SeriesDate = when.strftime("%Y%m%d")
    dataset.SeriesTime = when.strftime("%H%M%S")


def with_component_person_names(source: Dataset) -> Dataset:
    """``source`` as highdicom should see it: a Patient's Name without a component separator
    (e.g. ``Pancreas-CT-CB_001``) written with the trailing ``^`` that PS3.5 6.2.1 allows,
    which means the same name (family name only) and is not taken for a mistake. The source
    is untouched; :func:`keep_source_patient_name` puts the exact source value back on each
    result, so the PACS files the result under the very same patient."""
    name = source.get("PatientName")
    if name is None or str(name) == "" or "^" in str(name) or "=" in str(name):
        return source
    view = shallow_view(source)  # only the name below is replaced
    view.add_new(0x00100010, "PN", f"{name}^")
    return view


def shallow_view(source: Dataset) -> Dataset:
    """A new dataset sharing ``source``'s elements (and file meta): elements can be replaced
    or removed on the view without touching the source."""
    view = Dataset()
    view.update(source)
    if hasattr(source, "file_meta"):
        view.file_meta = source.file_meta
    return view


def keep_source_patient_name(result: Dataset, source: Dataset) -> Dataset:
    """The result carries the source's Patient's Name exactly as received."""
    if "PatientName" in source:
        result.add_new(0x00100010, "PN", source["PatientName"].value)
    return result


def header_only(dataset: Dataset) -> Dataset:
    """A copy without pixel data (for references)."""
    copy = Dataset(dataset)
    copy.pop("PixelData", None)
    return copy
