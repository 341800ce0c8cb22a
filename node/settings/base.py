"""Shared pieces of the configuration: the error type, the strict model base, validators of AE
titles, peer names, hosts and URLs, and the constants other packages name."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
)

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


