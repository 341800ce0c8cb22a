"""Frozen value types shared by every stage. Imports nothing from the package."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class SeriesState(StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"


class CompletionReason(StrEnum):
    QUIET = "quiet_period"
    EXPECTED_COUNT = "expected_count"
    RELEASE = "association_released"


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
