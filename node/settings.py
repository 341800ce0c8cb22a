"""Typed node configuration: one YAML file plus ``AINODE__SECTION__KEY`` environment overrides.

Invalid configuration raises :class:`ConfigError` whose message names each offending key
(``node.dicom_port: ...``), so a PACS administrator can fix the file without reading code.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from node.runtime.logs import mask_credentials
from node.runtime.retry import RetryPolicy

ENV_PREFIX = "AINODE__"
ENV_SEPARATOR = "__"


NOTIFY_PREFIX = "notify:"  # outbox destinations of notifications, beside peers' names
RESEARCH_PREFIX = "research:"  # outbox destinations of research exports
DEID_KEY_ENV = "AINODE_DEID_KEY"  # the de-identification key when research[].key_file is unset

# PS3.15 E.3 options, by their names in research[].options, with their CID 7050 codes
DEID_OPTIONS = {
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_longitudinal_full_dates": (
        "113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_longitudinal_modified_dates": (
        "113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}
DeidOption = Literal[
    "clean_structured_content", "clean_descriptors", "retain_longitudinal_full_dates",
    "retain_longitudinal_modified_dates", "retain_patient_characteristics",
    "retain_device_identity", "retain_uids", "retain_safe_private",
    "retain_institution_identity"]
# named profiles (research[].profile, ``ainode export --profile``): the options each adds
DEID_PROFILES: dict[str, tuple[str, ...]] = {
    "basic": (),
    "longitudinal": ("retain_longitudinal_modified_dates", "retain_patient_characteristics",
                     "clean_descriptors", "clean_structured_content"),
    "device": ("retain_longitudinal_modified_dates", "retain_patient_characteristics",
               "retain_device_identity", "clean_descriptors", "clean_structured_content"),
}
_SecretsT = TypeVar("_SecretsT", bound=BaseModel)


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key(s) at fault."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae_title(value: str) -> str:
    """AE titles are 1-16 characters of the default repertoire, no backslash (PS3.5 6.2, AE VR)."""
    stripped = value.strip()
    if not 1 <= len(stripped) <= 16:
        raise ValueError("an AE title has 1 to 16 characters")
    if "\\" in stripped or not stripped.isascii() or not stripped.isprintable():
        raise ValueError("an AE title is printable ASCII without backslash")
    return stripped


PEER_NAME = r"^[A-Za-z0-9._-]{1,64}$"  # also a URL path segment and a file name
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def _check_peer_name(value: str) -> str:
    if set(value) <= {"."}:
        raise ValueError("a name of dots only is not a name")
    return value


def _check_host(value: str, *, network: bool = False) -> str:
    """A host name (RFC 1123 labels) or an IP address; with ``network`` also a network
    (``10.1.2.0/24``)."""
    host = value.strip()
    try:
        if network and "/" in host:
            ipaddress.ip_network(host, strict=False)
        else:
            ipaddress.ip_address(host.strip("[]") if host.startswith("[") else host)
        return host
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253 or not all(_HOST_LABEL.match(label)
                                                for label in name.split(".")):
        raise ValueError(f"{host!r} is not a host name or an IP address"
                         + (" or network" if network else ""))
    return host


def check_http_url(value: str) -> str:
    """An ``http://`` or ``https://`` URL with a host, nothing else (no ``file:``,
    ``javascript:``, control characters or spaces)."""
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("give an http:// or https:// URL with a host")
    if any(not ch.isprintable() or ch.isspace() for ch in value):
        raise ValueError("a URL has no spaces or control characters")
    _check_host(parts.hostname)
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class TlsSection(_Strict):
    """DICOM TLS (PS3.15 Annex B, BCP 195: TLS 1.2 or newer). ``cert``/``key`` (PEM) are this
    node's certificate, also presented to peers that ask for a client certificate; ``ca`` the
    certificate authority whose client certificates are trusted. With ``port``, TLS is served
    there and ``node.dicom_port`` stays plain (``0`` turns it off); without, ``node.dicom_port``
    speaks only TLS."""

    enabled: bool = False
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    require_client_cert: bool = False
    port: int | None = Field(None, ge=1, le=65535)

    @model_validator(mode="after")
    def _complete(self) -> TlsSection:
        if self.enabled and (self.cert is None or self.key is None):
            raise ValueError("TLS needs cert and key (PEM files)")
        if self.require_client_cert and self.ca is None:
            raise ValueError("require_client_cert needs ca: the authority of trusted clients")
        for name in ("cert", "key", "ca"):
            path: Path | None = getattr(self, name)
            if self.enabled and path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file {path}")
        return self


class NodeSection(_Strict):
    """This node's own identity, listeners and storage."""

    ae_title: str = "AINODE"
    dicom_port: int = Field(
        11112, ge=0, le=65535, description="0: no plain DICOM port (only node.tls.port)")
    http_port: int = Field(
        8080, ge=0, le=65535,
        description="health, metrics, admin API, dashboard, STOW-RS in; 0: no HTTP server")
    http_bind: str = Field(
        "127.0.0.1", description="the HTTP server's address; beyond loopback only with a token")
    http_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values (names or addresses, *.domain) the HTTP server answers "
        "beyond loopback and http_bind, so DNS rebinding cannot reach it; with a wildcard "
        "http_bind and none given, any (the token guards it)")
    http_token: SecretStr | None = Field(
        None, description="Bearer token for everything but /healthz and /readyz (better given "
        "as AINODE__NODE__HTTP_TOKEN than written in the file)")
    bind: str = "0.0.0.0"  # noqa: S104 - a DICOM node listens for the PACS on the network
    data_dir: Path = Path("var")
    accept_unknown_callers: bool = False
    check_caller_host: bool = Field(
        False, description="a peer's AE title is accepted only from its hosts (else its host)")
    min_free_disk_mb: int = Field(1024, ge=0)
    max_instance_mb: int = Field(
        4096, ge=0, description="larger instances are refused (0xA700), not kept; 0: no limit")
    max_associations: int = Field(16, ge=1)
    acse_timeout_s: float = Field(30, gt=0)
    dimse_timeout_s: float = Field(60, gt=0)
    network_timeout_s: float = Field(60, gt=0)
    shutdown_grace_s: float = Field(
        30, ge=0, description="on SIGTERM: how long associations in progress may finish")
    max_pdu_size: int = Field(0, ge=0, description="0 = unlimited (fastest for large instances)")
    fsync: bool = Field(True, description="fsync every instance before acknowledging it")
    receive_to_disk: bool = Field(
        True, description="stream each data set to its spool file as it arrives"
    )
    event_driven_reactor: bool = Field(
        True, description="wake pynetdicom's reactors on events instead of 1 ms polling"
    )
    receiver_processes: int = Field(
        1, ge=1, le=64,
        description="receiver processes sharing the DICOM port (SO_REUSEPORT) under ainode serve",
    )

    tls: TlsSection = TlsSection()

    _ae = field_validator("ae_title")(_check_ae_title)

    @model_validator(mode="after")
    def _http_open_only_with_a_token(self) -> NodeSection:
        if self.http_port and self.http_token is None and not _is_loopback(self.http_bind):
            raise ValueError(f"http_bind {self.http_bind} is beyond this machine: set "
                             "node.http_token (AINODE__NODE__HTTP_TOKEN) or bind 127.0.0.1")
        if self.http_token is not None and len(self.http_token.get_secret_value()) < 16:
            raise ValueError("http_token: use at least 16 characters")
        return self

    @model_validator(mode="after")
    def _something_listens(self) -> NodeSection:
        tls_port = self.tls.port if self.tls.enabled else None
        if self.dicom_port == 0 and tls_port is None:
            raise ValueError("dicom_port 0 needs tls.enabled with tls.port: nothing would listen")
        if tls_port is not None and tls_port == self.dicom_port:
            raise ValueError("tls.port must differ from dicom_port (omit it to serve only TLS "
                             "on dicom_port)")
        return self


class StoreSection(_Strict):
    """Where the job store lives: SQLite under ``node.data_dir`` (default, one machine) or a
    PostgreSQL database that several nodes share (``postgresql://user:pass@host:port/db``;
    better given as ``AINODE__STORE__URL`` than written in the file)."""

    url: str | None = None

    @field_validator("url")
    @classmethod
    def _known_engine(cls, url: str | None) -> str | None:
        if url and not url.startswith(("postgresql://", "postgres://", "sqlite:///")):
            raise ValueError("must start with postgresql:// or sqlite:///")
        return url


class _WithSecrets(_Strict):
    """A model whose secrets (``SecretStr`` fields) are read with :meth:`secret_value`."""

    def secret_value(self, field_name: str) -> str | None:
        """The secret's text (given, or read from its file or variable; for the client that
        sends it only), or ``None``."""
        value: SecretStr | None = getattr(self, field_name)
        return value.get_secret_value() if value is not None else None


class Peer(_WithSecrets):
    """A known application entity: may send to us, and may receive results.

    Results go by C-STORE, or by STOW-RS when ``dicomweb_url`` is set (HTTP basic auth with
    ``username``/``password``, or a bearer ``token``). Secrets are never printed; they can be
    read from a file (``password_file``, ``token_file``: e.g. a container secret) or an
    environment variable (``password_env``, ``token_env``: its name) instead of being written
    in the configuration."""

    name: str = Field(min_length=1, max_length=64, pattern=PEER_NAME)
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    dicomweb_url: str | None = None
    results: list[Literal["seg", "sr", "sc"]] | None = Field(
        None, description="result kinds this peer wants (e.g. [sc] for a viewer without SEG)"
    )
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: str | None = None
    token: SecretStr | None = None
    token_file: Path | None = None
    token_env: str | None = None
    hosts: list[str] = Field(
        default_factory=list,
        description="addresses, networks (10.1.2.0/24) or names this peer may call from, "
                    "checked with node.check_caller_host (default: its host)")
    tls: bool = Field(False, description="C-STORE / C-ECHO to this peer over DICOM TLS")
    tls_ca: Path | None = Field(
        None, description="the authority that signed the peer's certificate (else the system's)")
    retrieve: Literal["get", "move", "wado"] | None = Field(
        None, description="how studies are retrieved from it on demand (ainode run): C-GET, "
        "C-MOVE to this node, or WADO-RS; default wado with dicomweb_url, else get")

    _ae = field_validator("ae_title")(_check_ae_title)
    _name = field_validator("name")(_check_peer_name)
    _host = field_validator("host")(_check_host)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        return [_check_host(h, network=True) for h in hosts]

    @field_validator("dicomweb_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return None if url is None else check_http_url(url)

    @model_validator(mode="after")
    def _resolve_secrets(self) -> Peer:
        return _resolve_secrets(self, ("password", "token"))


def _resolve_secrets(model: _SecretsT, names: tuple[str, ...]) -> _SecretsT:
    """Each secret ``NAME`` given as itself, or read from ``NAME_file`` or the variable
    ``NAME_env`` names (one of the three), stored as the secret."""
    for field_name in names:
        file: Path | None = getattr(model, f"{field_name}_file")
        variable: str | None = getattr(model, f"{field_name}_env")
        given = [getattr(model, field_name) is not None, file is not None, bool(variable)]
        if sum(given) > 1:
            raise ValueError(f"set one of {field_name}, {field_name}_file, {field_name}_env")
        if file is not None:
            try:
                secret = file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"{field_name}_file {file}: {exc.strerror}") from exc
        elif variable:
            if variable not in os.environ:
                raise ValueError(f"{field_name}_env: {variable} is not set")
            secret = os.environ[variable]
        else:
            continue
        object.__setattr__(model, field_name, SecretStr(secret))
    return model


class Notification(_WithSecrets):
    """Where urgent results (or every result, ``every_result``) are announced, durably
    through the outbox like results: a JSON ``webhook`` (signed with HMAC-SHA256 when a
    ``secret`` is set), a FHIR R4 server (``fhir``: its base URL; a DiagnosticReport with
    the findings as Observations, bearer ``token`` optional) or a RIS over HL7 v2.5 MLLP
    (``hl7``: host:port; ORU^R01)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    webhook: str | None = None
    fhir: str | None = None
    hl7: str | None = None
    every_result: bool = Field(False, description="also routine results (default: urgent)")
    secret: SecretStr | None = None
    secret_file: Path | None = None
    secret_env: str | None = None
    token: SecretStr | None = None
    token_file: Path | None = None
    token_env: str | None = None
    sending_facility: str = Field("", description="HL7 MSH-4")
    receiving_application: str = Field("RIS", description="HL7 MSH-5")
    receiving_facility: str = Field("", description="HL7 MSH-6")

    @model_validator(mode="after")
    def _one_channel(self) -> Notification:
        channels = [c for c in ("webhook", "fhir", "hl7") if getattr(self, c)]
        if len(channels) != 1:
            raise ValueError("give exactly one of webhook, fhir, hl7")
        if self.hl7 is not None:
            host, _, port = self.hl7.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"hl7: give host:port, not {self.hl7!r}")
        for url in (self.webhook, self.fhir):
            if url is not None and not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r}: give an http:// or https:// URL")
        return _resolve_secrets(self, ("secret", "token"))

    @property
    def channel(self) -> str:
        return "webhook" if self.webhook else "fhir" if self.fhir else "hl7"

    @property
    def destination(self) -> str:
        """Its name in the outbox."""
        return NOTIFY_PREFIX + self.name


class Research(_Strict):
    """A research destination (PS3.15 Annex E de-identification on the way out): a folder
    (``path``) or a configured DICOM / DICOMweb peer (``peer``). ``profile`` names a set of
    options (``basic``, ``longitudinal``, ``device``), ``options`` adds more. UIDs, the patient
    and dates get pseudonyms keyed by the project's secret: the file ``key_file`` names, else
    the variable ``AINODE_DEID_KEY`` — never this file. ``crosswalk`` keeps pseudonym ->
    original in the job store for authorised re-identification (off by default)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    path: Path | None = None
    peer: str | None = None
    profile: str = "basic"
    options: list[DeidOption] = []
    include_results: bool = Field(False, description="the study's SEG and SR go along")
    key_file: Path | None = None
    crosswalk: bool = False
    keep_private: list[str] = Field(
        [], description="private attributes kept: 'GGGG,CREATOR,EE' (element within the block)")

    @model_validator(mode="after")
    def _consistent(self) -> Research:
        if (self.path is None) == (self.peer is None):
            raise ValueError("give exactly one of path, peer")
        if self.profile not in DEID_PROFILES:
            raise ValueError(f"profile: {self.profile!r} is not one of "
                             f"{', '.join(DEID_PROFILES)}")
        chosen = self.all_options(self.profile)
        if {"retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"} <= set(chosen):
            raise ValueError("options: full dates and modified dates exclude each other")
        if self.include_results and "clean_structured_content" not in chosen:
            raise ValueError("include_results needs the option clean_structured_content (the "
                             "SR's findings are structured content)")
        for entry in self.keep_private:
            group, creator, element = ([*entry.split(",", 2), "", ""])[:3]
            if not (len(group) == 4 and _is_hex(group) and int(group, 16) % 2 == 1 and creator
                    and len(element) == 2 and _is_hex(element)):
                raise ValueError(f"keep_private: {entry!r} is not 'GGGG,CREATOR,EE' with an odd"
                                 " group")
        return self

    def all_options(self, profile: str | None = None) -> tuple[str, ...]:
        """The options in effect: the profile's (``profile`` overrides this entry's) and
        ``options``, each once."""
        named = DEID_PROFILES[profile or self.profile]
        return tuple(dict.fromkeys([*named, *self.options]))

    @property
    def destination(self) -> str:
        """Its name in the outbox (a pipeline's ``research`` output)."""
        return RESEARCH_PREFIX + self.name


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


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
    outputs: list[Literal["seg", "sr", "sc", "research"]] = ["seg", "sr"]
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


def _require_unique(kind: str, names: list[str]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{kind} names must be unique, repeated: {', '.join(repeated)}")


class Settings(_Strict):
    node: NodeSection = NodeSection()
    peers: list[Peer] = []
    inference: InferenceSection = InferenceSection()
    pipelines: list[Pipeline] = []
    series: SeriesSection = SeriesSection()
    egress: EgressSection = EgressSection()
    store: StoreSection = StoreSection()
    audit: AuditSection = AuditSection()
    retention: RetentionSection = RetentionSection()
    notify: list[Notification] = []
    research: list[Research] = []

    @model_validator(mode="after")
    def _unique_peer_names(self) -> Settings:
        _require_unique("peer", [p.name for p in self.peers])
        _require_unique("notify", [n.name for n in self.notify])
        _require_unique("research", [r.name for r in self.research])
        return self

    def research_destination(self, name: str) -> Research | None:
        """The research entry called ``name``, or whose outbox destination is ``name``."""
        name = name.removeprefix(RESEARCH_PREFIX)
        return next((r for r in self.research if r.name == name), None)

    def notification(self, destination: str) -> Notification | None:
        """The notification whose outbox destination is ``destination``."""
        return next((n for n in self.notify if n.destination == destination), None)

    @model_validator(mode="after")
    def _pipelines_are_consistent(self) -> Settings:
        _require_unique("pipeline", [p.name for p in self.pipelines])
        known = {p.name for p in self.peers}
        for index, pipeline in enumerate(self.pipelines):
            unknown = [d for d in pipeline.destinations if d not in known]
            if unknown:
                raise ValueError(
                    f"pipelines.{index}.destinations: unknown peer(s) {', '.join(unknown)}"
                )
            if ("research" in pipeline.outputs) != (pipeline.research is not None):
                raise ValueError(f"pipelines.{index}: the output research and research: NAME "
                                 "go together")
            if pipeline.research and self.research_destination(pipeline.research) is None:
                raise ValueError(f"pipelines.{index}.research: no research entry named "
                                 f"{pipeline.research!r}")
        for index, research in enumerate(self.research):
            if research.peer is not None and research.peer not in known:
                raise ValueError(f"research.{index}.peer: unknown peer {research.peer!r}")
        return self

    def peer(self, name: str) -> Peer:
        """The peer called ``name`` (case-sensitive); ``KeyError`` naming the known ones."""
        for candidate in self.peers:
            if candidate.name == name:
                return candidate
        known = ", ".join(p.name for p in self.peers) or "none"
        raise KeyError(f"no peer named {name!r} in peers (known: {known})")

    def peer_by_name(self, name: str) -> Peer | None:
        return next((p for p in self.peers if p.name == name), None)

    def peer_by_ae(self, ae_title: str) -> Peer | None:
        for candidate in self.peers:
            if candidate.ae_title == ae_title.strip():
                return candidate
        return None


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``AINODE__NODE__DICOM_PORT=104``-style variables (values parsed as YAML)."""
    merged = dict(raw)
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split(ENV_SEPARATOR) if part]
        if not path:
            continue
        cursor = merged
        for part in path[:-1]:
            child = cursor.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            cursor[part] = child
            cursor = child
        cursor[path[-1]] = yaml.safe_load(value) if value else value
    return merged


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {key}: {item['msg']}")
    return "\n".join(lines)


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (or defaults when ``None``), apply env overrides, validate."""
    raw: dict[str, Any] = {}
    source = str(path) if path else "defaults"
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"configuration {path} must be a mapping at the top level")
        raw = loaded
    raw = _apply_env(raw, os.environ if environ is None else environ)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from exc
    return settings


def dump_settings(settings: Settings) -> str:
    """The effective configuration as YAML (what ``ainode config check`` prints)."""
    def masked(value: Any) -> Any:
        if isinstance(value, str):
            return mask_credentials(value)
        if isinstance(value, dict):
            return {key: masked(item) for key, item in value.items()}
        if isinstance(value, list):
            return [masked(item) for item in value]
        return value

    return yaml.safe_dump(masked(settings.model_dump(mode="json")), sort_keys=False)
