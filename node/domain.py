"""Frozen value types shared by every stage. Imports nothing from the package."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal


class SeriesState(StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"


class CompletionReason(StrEnum):
    QUIET = "quiet_period"
    EXPECTED_COUNT = "expected_count"
    RELEASE = "association_released"
    OPERATOR = "operator"  # "complete now" from the admin API


class AuditEvent(StrEnum):
    """Every event the audit trail records (its ``action`` text, as ``ainode audit`` shows
    it). Each is sent as one PS3.15 A.5 audit message (:data:`node.audit.atna.MESSAGES`)."""

    NODE_STARTED = "node started"
    NODE_STOPPED = "node stopped"
    PROCESS_ENDED = "process ended"
    ASSOCIATION_RELEASED = "association released"
    ASSOCIATION_ABORTED = "association aborted"
    ASSOCIATION_REJECTED = "association rejected"
    AUTHENTICATION_FAILED = "authentication failed"
    CONFIGURATION_CHANGED = "configuration changed"
    PEER_ADDED = "peer added"
    PEER_CHANGED = "peer changed"
    PEER_REMOVED = "peer removed"
    PEER_RESET = "peer reset"
    JOB_DONE = "job done"
    JOB_FAILED = "job failed"
    JOB_CANCELLED = "job cancelled"
    JOBS_REQUEUED = "requeue jobs"
    RESULTS_REQUEUED = "requeue results"
    RESULT_WITHDRAWN = "result withdrawn"
    RESULT_ASSESSED = "result assessed"
    SERIES_COMPLETED = "series completed"
    RESULTS_SENT = "results sent"
    DELIVERY_GIVEN_UP = "delivery given up"
    STUDY_RETRIEVED = "study retrieved"
    STUDY_RETRIEVE_FAILED = "study retrieve failed"
    DELETED = "deleted"
    RESEARCH_EXPORT = "research export"
    REIDENTIFICATION = "re-identification"


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """One received instance as written to the spool. Holds UIDs only, never patient data."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    modality: str
    path: str
    size_bytes: int
    calling_ae: str
    called_ae: str
    expected_count: int | None = None
    body_part: str = ""
    series_description: str = ""
    image_type: str = ""
    slice_thickness_mm: float | None = None


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """A series revision: instances arriving after completion open revision + 1."""

    series_instance_uid: str
    revision: int


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """What recording an instance did: the revision it joined, and whether it replaced one."""

    series: SeriesKey
    duplicate: bool
    instance_count: int
    expected_count: int | None
    whole_slide: bool = False  # a level (or label, overview) of a slide: PS3.3 A.32.8


@dataclass(frozen=True, slots=True)
class SeriesAttributes:
    """What routing rules may look at: a completed series revision, no patient data."""

    key: SeriesKey
    called_ae: str
    calling_ae: str
    modality: str
    body_part: str
    sop_class_uid: str
    series_description: str
    image_type: str
    instance_count: int
    slice_thickness_mm: float | None
    slide: SlideAttributes | None = None  # a whole slide (SM): what its headers say


@dataclass(frozen=True, slots=True)
class SlideAttributes:
    """What routing rules may look at of a whole slide (no patient data)."""

    image_types: tuple[str, ...] = ()
    specimens: tuple[str, ...] = ()
    stains: tuple[str, ...] = ()
    optical_paths: tuple[str, ...] = ()


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # permanent: a reason a retry cannot fix, or attempts exhausted
    SUPERSEDED = "superseded"  # a newer revision of its series replaced it before it finished
    CANCELLED = "cancelled"  # by an operator (admin API); retry queues it again


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed job. ``attempts`` counts this one and earlier ones that crashed or raised
    (not outages); ``owner`` is the claim's token: only its holder may finish the job."""

    id: int
    series: SeriesKey
    pipeline: str
    model: str
    attempts: int
    owner: str = ""
    first_failed_at: float | None = None  # when the current outage began for this job
    transient: int = 0  # earlier attempts that met an outage (not counted)


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    series_instance_uid: str
    revision: int
    study_instance_uid: str
    modality: str
    calling_ae: str
    state: SeriesState
    instance_count: int
    duplicate_count: int
    expected_count: int | None
    first_received_at: float
    last_received_at: float
    completed_at: float | None
    completion_reason: str | None
    route_state: str | None = None
    route_detail: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one outbox item at its destination: ``sent``; ``retry`` (the peer is
    down, busy or out of resources: backoff, then dead at the end of the window); ``dead``
    (a refusal the peer will repeat). ``reason`` says why, for the operator."""

    verdict: Literal["sent", "retry", "dead"]
    reason: str = ""

    @classmethod
    def sent(cls, reason: str = "") -> Outcome:
        return cls("sent", reason)

    @classmethod
    def retry(cls, reason: str) -> Outcome:
        return cls("retry", reason)

    @classmethod
    def dead(cls, reason: str) -> Outcome:
        return cls("dead", reason)

    @classmethod
    def of_dimse_status(cls, status: int) -> Outcome:
        """A C-STORE response status (PS3.7 C.4.2, PS3.4 B.2.3): success and warnings
        (0xB000-0xBFFF) are sent; out of resources (0xA7xx) is retried; any other failure
        (0xA9xx data set mismatch, 0xCxxx cannot understand, refused SOP class) is dead."""
        text = f"0x{status:04X}"
        if status == 0 or 0xB000 <= status <= 0xBFFF:
            return cls.sent(text)
        if 0xA700 <= status <= 0xA7FF:
            return cls.retry(text)
        return cls.dead(text)


@dataclass(frozen=True, slots=True)
class Finding:
    """What a model found of one label: whether it counts as present, and what was measured
    (a volume in ml and voxels; for a radiograph an area in mm² and pixels; a classifier's or
    heatmap's probability). Kept in the job's summary as JSON (:meth:`as_json`)."""

    present: bool
    probability: float | None = None
    volume_ml: float | None = None
    voxels: int | None = None
    area_mm2: float | None = None
    pixels: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__
                if getattr(self, name) is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Finding:
        return cls(**{name: data[name] for name in cls.__slots__ if data.get(name) is not None})

    def size_text(self) -> str:
        """Its size for people: the probability, ml, or for a radiograph mm² (or pixels)."""
        if self.probability is not None:
            return f"p={self.probability:.2f}"
        if self.volume_ml is not None:
            return f"{self.volume_ml:.1f} ml"
        if self.area_mm2 is not None:
            return f"{self.area_mm2:.0f} mm2"
        return f"{self.pixels or 0} px"


Findings = Mapping[str, Finding]  # by label name
