"""Where the node sends: DICOM peers, notification channels, research destinations; the secret
triples they share (value, ``*_file``, ``*_env``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from node.settings.base import (
    DEID_PROFILES,
    NOTIFY_PREFIX,
    PEER_NAME,
    RESEARCH_PREFIX,
    DeidOption,
    _check_ae_title,
    _check_host,
    _check_peer_name,
    _SecretsT,
    _Strict,
    check_http_url,
)


class _WithSecrets(_Strict):
    """A model with secrets, each a triple of fields (a :class:`SecretRef`): ``NAME`` given as
    itself, or read from the file ``NAME_file`` or the variable ``NAME_env`` names (one of the
    three), kept as the secret and read with :meth:`secret_value`. Secrets are never printed."""

    def secret_value(self, field_name: str) -> str | None:
        """The secret's text (given, or read from its file or variable; for the client that
        sends it only), or ``None``."""
        value: SecretStr | None = getattr(self, field_name)
        return value.get_secret_value() if value is not None else None

    @model_validator(mode="after")
    def _resolve_secrets(self) -> _WithSecrets:
        fields = type(self).model_fields
        names = tuple(name for name in fields
                      if f"{name}_file" in fields and f"{name}_env" in fields)
        return _resolve_secrets(self, names)


class _Password(_WithSecrets):
    """SecretRef ``password`` (HTTP basic authentication)."""

    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: str | None = None


class _Token(_WithSecrets):
    """SecretRef ``token`` (a bearer token)."""

    token: SecretStr | None = None
    token_file: Path | None = None
    token_env: str | None = None


class _SigningSecret(_WithSecrets):
    """SecretRef ``secret`` (the key a webhook's HMAC is made with)."""

    secret: SecretStr | None = None
    secret_file: Path | None = None
    secret_env: str | None = None


class Peer(_Password, _Token):
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
    results: list[Literal["seg", "sr", "sc", "ann"]] | None = Field(
        None, description="result kinds this peer wants (e.g. [sc] for a viewer without SEG)"
    )
    iocm: bool = Field(
        False, description="acts on IHE IOCM rejection notes: results the node withdraws or "
                           "supersedes are rejected there with a Key Object Selection note")
    username: str | None = None
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


class Notification(_SigningSecret, _Token):
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
        return self

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


