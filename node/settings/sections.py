"""The inference, pipeline (routing, segments, urgency), egress, series, audit and retention
sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from node.runtime.retry import RetryPolicy
from node.settings.base import _Strict


class InferenceSection(_Strict):
    """Where models run: in-process (onnxruntime) or on a Triton Inference Server."""

    backend: Literal["embedded", "triton"] = "embedded"
    triton_url: str | None = None
    triton_protocol: Literal["grpc", "http"] = "grpc"
    triton_shared_memory: bool = Field(
        False, description="pass tensors through system shared memory (server on this host)"
    )
    timeout_s: float = Field(300, gt=0)
    retries: int = Field(3, ge=0, description="retries of a failed request, with backoff")
    model_repository: Path = Path("model_repository")
    workers: int = Field(1, ge=1, description="jobs processed at once")
    isolation: Literal["process", "thread"] = Field(
        "process", description="process: each worker runs its jobs in a process of its own,"
        " replaced when it crashes or hangs; thread: in the node's process")
    worker_nice: int = Field(
        10, ge=0, le=19,
        description="CPU priority of worker processes below the receivers (nice increment)")
    job_timeout_s: float = Field(
        3600, gt=0, description="a job running longer is stopped (its worker process"
        " replaced) and retried as a failed attempt")
    job_attempts: int = Field(
        5, ge=1, description="attempts that crash or raise before a job fails"
    )
    job_retry_s: float = Field(10, gt=0, description="first retry delay; doubles each attempt")
    max_job_retry_s: float = Field(300, gt=0, description="longest delay between retries")
    retry_window_s: float = Field(
        3600, gt=0, description="how long a backend outage is retried before the job fails"
    )
    lease_s: float = Field(
        60, ge=5, description="a running job's lease; renewed every third of it while alive"
    )

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.job_retry_s, self.max_job_retry_s, self.retry_window_s)

    @model_validator(mode="after")
    def _triton_needs_url(self) -> InferenceSection:
        if self.backend == "triton" and not self.triton_url:
            raise ValueError("triton_url is required when backend is triton")
        return self


class MatchRule(_Strict):
    """Declarative series match (no code, no eval). Every given condition must hold.

    Text conditions are shell-style patterns (``*``, ``?``, ``[..]``), case-insensitive;
    ``image_type`` is matched against the values joined by backslashes (``ORIGINAL\\PRIMARY*``).
    A whole slide (``modality: SM``) matches ``image_type`` when one of its images does, and
    ``specimen`` (identifier or short description), ``stain`` (substances of its staining
    steps) and ``optical_path`` (description or illumination) when one of its values does.
    """

    called_ae: str | None = None
    calling_ae: str | None = None
    modality: str | list[str] | None = None
    body_part: str | None = None
    sop_class_uid: str | list[str] | None = None
    series_description: str | None = None
    image_type: str | None = None
    min_instances: int | None = Field(None, ge=1)
    max_instances: int | None = Field(None, ge=1)
    min_slice_thickness_mm: float | None = Field(None, ge=0)
    max_slice_thickness_mm: float | None = Field(None, ge=0)
    specimen: str | list[str] | None = None
    stain: str | list[str] | None = None
    optical_path: str | list[str] | None = None


class CodeSpec(_Strict):
    """A coded concept: (scheme, value, meaning), e.g. ``[SCT, "39607008", Lung]``."""

    scheme: str = Field(min_length=1)
    value: str = Field(min_length=1)
    meaning: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, data: Any) -> Any:
        if isinstance(data, list | tuple) and len(data) == 3:
            return {"scheme": data[0], "value": str(data[1]), "meaning": data[2]}
        return data


class SegmentSpec(_Strict):
    """How one model label is coded in SEG and SR (PS3.3 C.8.20.4 Segment Description)."""

    category: CodeSpec
    type: CodeSpec
    color: tuple[int, int, int] = Field((255, 0, 0), description="sRGB display colour")


class UrgencyRule(_Strict):
    """A result is urgent when a segmentation label is present with at least ``min_volume_ml``
    (``label``), or a classification finding has at least ``min_probability`` (``finding``;
    by default the model's threshold)."""

    label: str | None = None
    min_volume_ml: float = Field(0.0, ge=0)
    finding: str | None = None
    min_probability: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _one_subject(self) -> UrgencyRule:
        if (self.label is None) == (self.finding is None):
            raise ValueError("an urgency rule names either a label or a finding")
        if self.finding is None and self.min_probability is not None:
            raise ValueError("min_probability goes with a finding (a classification output)")
        return self


class Pipeline(_Strict):
    """match -> model -> outputs -> destinations."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    match: MatchRule = MatchRule()
    model: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    version: int | None = Field(
        None, ge=1, description="the model's numbered version directory (default: the newest)")
    mode: Literal["live", "shadow"] = Field(
        "live", description="shadow: runs on every series the pipeline shadow_of runs on, "
                            "delivers nothing, and is compared with it")
    shadow_of: str | None = Field(None, description="the live pipeline a shadow runs beside")
    outputs: list[Literal["seg", "sr", "sc", "ann", "research"]] = ["seg", "sr"]
    research: str | None = Field(
        None, description="the research[] entry the output kind research exports the series to")
    destinations: list[str] = []
    reply_to_sender: bool = Field(False, description="also send results to the calling AE")
    segments: dict[str, SegmentSpec] = Field(
        {}, description="codes and colours per model label (by label name)"
    )
    urgent_if: list[UrgencyRule] = []
    priority: int = Field(0, description="higher runs first; urgent pipelines use e.g. 10")
    report_negative: bool | None = Field(
        None, description="write an SR saying so when nothing is found (rule-out); default: "
        "on for classification models, off for segmentation models")


class EgressSection(_Strict):
    """Delivery of results: transient failures retried with exponential backoff over a time
    window, then the dead letter; refusals that will repeat go there at once."""

    retry_s: float = Field(5, gt=0)
    max_retry_s: float = Field(600, gt=0)
    retry_window_s: float = Field(
        86400, gt=0, description="how long a destination that is down is retried (24 h)"
    )
    interval_s: float = Field(1, gt=0, description="how often the outbox is looked at")
    timeout_s: float = Field(60, gt=0)
    probe_s: float = Field(
        15, gt=0, description="while every result for a destination waits out its backoff, "
        "one is tried this often; when one goes, the rest go at once")

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retry_s, self.max_retry_s, self.retry_window_s)


class DriftSection(_Strict):
    """Watching each pipeline for drift: today's inputs and outputs against a baseline (its
    first ``baseline_days``, or its first ``baseline_jobs`` jobs when given), by the
    Population Stability Index of each feature's distribution."""

    baseline_days: float = Field(7, gt=0, description="the pipeline's first days are the "
                                                         "baseline")
    baseline_jobs: int | None = Field(None, ge=1, description="instead: its first N jobs")
    window_days: float = Field(1, gt=0, description="the recent jobs compared with it")
    psi_warning: float = Field(0.25, gt=0, description="PSI from which a feature has "
                                                         "drifted (0.1-0.25: moderate)")
    min_jobs: int = Field(3, ge=1, description="fewer recent jobs than this: no verdict")
    check_interval_s: float = Field(60, gt=0, description="how often, at most, a pipeline's "
                                                            "drift is checked after its jobs")


class SeriesSection(_Strict):
    """When a series counts as complete (any of these, whichever comes first)."""

    quiet_seconds: float = Field(5, gt=0)
    complete_on_release: bool = False
    use_expected_count: bool = True
    sweep_interval_s: float = Field(0.5, gt=0)


class AuditSection(_Strict):
    """A copy of the audit trail for the hospital's audit repository: DICOM audit messages
    (PS3.15 A.5, the IHE ATNA format) over syslog (RFC 5424; UDP as RFC 5426, TCP with octet
    counting as RFC 6587). Lines are forwarded in order; over TCP a collector that is down
    gets them when it is back."""

    syslog: str | None = Field(None, description="the collector, host:port")
    transport: Literal["udp", "tcp"] = "udp"
    source_id: str | None = Field(None, description="AuditSourceID (default: node.ae_title)")
    enterprise_site: str = Field("", description="AuditEnterpriseSiteID, e.g. the hospital")
    interval_s: float = Field(1, gt=0, description="how often new lines are looked for")

    @field_validator("syslog")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"give host:port, not {value!r}")
        return value

    @property
    def collector(self) -> tuple[str, int] | None:
        if self.syslog is None:
            return None
        host, _, port = self.syslog.rpartition(":")
        return host.strip("[]"), int(port)


class RetentionSection(_Strict):
    """When received instances and results are removed: ``days`` after a series' results
    were all delivered, ``failed_days`` after its last job failed or a result was given up
    (so an operator can requeue it meanwhile). Above ``high_water_percent`` disk use, the
    oldest delivered series go first, then the oldest failed ones, regardless of age. Data
    whose results are still pending is never removed. Each removal is audited."""

    enabled: bool = True
    days: float = Field(7, ge=0)
    failed_days: float = Field(30, ge=0)
    high_water_percent: float = Field(90, gt=0, le=100)
    interval_s: float = Field(600, gt=0, description="how often retention runs")


