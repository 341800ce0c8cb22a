"""Logging for every ``ainode`` process: one format, Python warnings routed through logging,
no patient data from other libraries' messages, and no credentials from any URL.

Our own modules log UIDs, AE titles and reasons, never names or IDs. Libraries are not so
careful: highdicom's person-name warning quotes the patient's name, pydicom's value warnings
quote the offending value, an exception may carry either. Two filters guard every line,
tracebacks included:

- :class:`RedactPatientValues` redacts, by *value*, what identifies the patient of the data
  set being processed on this thread (:func:`redacting`): names and their components, IDs,
  birth date, accession number, the study's UIDs; whatever characters they contain. Records
  from outside ``node`` also lose every quoted value (a value we did not know to register).
- :class:`MaskCredentials` replaces the user information of every URL and the values of
  query parameters named like a key, token, secret, password or signature with ``***``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any

_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")
REDACTED = "<redacted>"
MASK = "***"
NOISY = ("pynetdicom", "highdicom")

# scheme://user:password@host -> scheme://***@host
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#@\s\"'<>]+@")
# ?apikey=... &access_token=... ;signature=...
_SECRET_PARAMETER = re.compile(
    r"(?i)([?&;][^=&#\s\"'<>]*(?:key|token|secret|passw(?:or)?d|pwd|signature|sig|auth|"
    r"credential)[^=&#\s\"'<>]*=)[^&#\s\"'<>]*")

# attributes (keywords) whose values identify the patient or the study (PS3.15 E.1-1)
PATIENT_ATTRIBUTES = (
    "PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "PatientBirthName",
    "PatientMotherBirthName", "IssuerOfPatientID", "AccessionNumber", "StudyInstanceUID",
    "StudyID", "PatientAddress", "PatientTelephoneNumbers", "OtherPatientNames",
    "ReferringPhysicianName", "MedicalRecordLocator",
)
_MIN_REDACTED_LENGTH = 3  # shorter parts ("M", "Jr") would redact half of every message
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def mask_credentials(text: str) -> str:
    """``text`` with the credentials of every URL in it masked (user info, and query
    parameters named like key/token/secret/password/signature)."""
    if "://" not in text and "=" not in text:
        return text
    return _SECRET_PARAMETER.sub(lambda m: m.group(1) + MASK,
                                 _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text))


def printable(text: object) -> str:
    """``text`` safe for a terminal or a log line: control characters (newline, ESC, ...)
    written as escapes (``\\n``, ``\\x1b``), so a value cannot fake a line or move the
    cursor."""
    value = str(text)
    if not _CONTROL.search(value) and value.isprintable():
        return value
    return "".join(ch if ch.isprintable() and unicodedata.category(ch) != "Cc"
                   else ch.encode("unicode_escape").decode("ascii") for ch in value)


# -- values of the data set being processed -------------------------------------------------
_local = threading.local()


def _values_of(dataset: Any) -> set[str]:
    found: set[str] = set()
    for keyword in PATIENT_ATTRIBUTES:
        value = getattr(dataset, keyword, None) if dataset is not None else None
        if value is None or value == "":
            continue
        if hasattr(value, "components") or isinstance(value, str | bytes) \
                or not isinstance(value, Iterable):
            items: list[Any] = [value]
        else:  # multi-valued (OtherPatientIDs)
            items = list(value)
        for item in items:
            text = str(item).strip()
            if not text:
                continue
            found.add(text)
            # a person name's components and its words: "SMITH^JACK" -> SMITH, JACK
            found.update(part for part in re.split(r"[\^=\s\"',]+", text) if part)
    return {v for v in found if len(v) >= _MIN_REDACTED_LENGTH}


@contextlib.contextmanager
def redacting(datasets: Any | Iterable[Any]) -> Iterator[None]:
    """While inside, every log line of this thread (any logger, tracebacks included) has the
    patient's values of ``datasets`` (one data set or several) replaced by ``<redacted>``."""
    many = datasets if isinstance(datasets, list | tuple) else [datasets]
    added: set[str] = set()
    for dataset in many:
        added |= _values_of(dataset)
    previous: frozenset[str] = getattr(_local, "values", frozenset())
    _local.values = previous | added
    try:
        yield
    finally:
        _local.values = previous


def _redact_values(text: str, values: Iterable[str]) -> str:
    # longest first, so "SMITH JACK" goes whole before "SMITH" alone
    for value in sorted(values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def _rewrite(record: logging.LogRecord, change: Any) -> None:
    """Apply ``change(text) -> text`` to the record's message and its traceback text."""
    message = record.getMessage()
    changed = change(message)
    if changed != message:
        record.msg, record.args = changed, ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = change(record.exc_text)
    if record.stack_info:
        record.stack_info = change(record.stack_info)


class RedactPatientValues(logging.Filter):
    """The patient's values registered by :func:`redacting` on this thread, from any logger;
    and every quoted value in records from outside the ``node`` package."""

    def filter(self, record: logging.LogRecord) -> bool:
        values: frozenset[str] = getattr(_local, "values", frozenset())
        foreign = not (record.name == "node" or record.name.startswith("node."))

        def change(text: str) -> str:
            if values:
                text = _redact_values(text, values)
            if foreign:
                text = _QUOTED.sub(f'"{REDACTED}"', text)
            return text

        if values or foreign:
            _rewrite(record, change)
        return True


RedactQuotedValues = RedactPatientValues  # its earlier name


class MaskCredentials(logging.Filter):
    """Credentials in URLs masked in every record (:func:`mask_credentials`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _rewrite(record, mask_credentials)
        return True


class QuietNetworkErrors(logging.Filter):
    """pynetdicom logs a peer that stalls or drops mid-PDU with a traceback; a client's
    network fault is one warning line, not a stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not record.name.startswith("pynetdicom"):
            return True
        if isinstance(error, OSError):
            record.msg, record.args = f"network error: {error.__class__.__name__}: {error}", ()
        elif isinstance(error, ValueError) and "AE Title" in str(error):
            # a request whose AE titles cannot be decoded (control characters): one line,
            # escaped, not a traceback carrying the raw bytes
            record.msg, record.args = f"association request refused: {printable(error)}", ()
        else:
            return True
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


FILTERS = (QuietNetworkErrors, RedactPatientValues, MaskCredentials)


LOG_FORMAT_ENV = "AINODE_LOG_FORMAT"  # "json" or "text": what role and worker processes inherit
FORMATS = ("text", "json")
_JOB = re.compile(r"\bjob (\d+)\b")
_SERIES = re.compile(r"\bseries ([0-9][0-9.]{0,63})(?: rev (\d+))?")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, the fields a log aggregator indexes: ``time`` (UTC, ISO
    8601), ``level``, ``role``, ``logger``, ``event`` (the message, already redacted and
    masked by the filters), ``job_id``, ``series_uid`` and ``revision`` when the message
    names them, ``exception`` (the traceback, redacted alike). Never a patient's value: the
    same filters run before this formatter as before the text one."""

    def __init__(self, role: str | None) -> None:
        super().__init__()
        self._role = role

    def format(self, record: logging.LogRecord) -> str:
        import datetime as dt
        import json

        event = record.getMessage()
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "role": self._role,
            "logger": record.name,
            "event": event,
        }
        job = _JOB.search(event)
        if job:
            entry["job_id"] = int(job.group(1))
        series = _SERIES.search(event)
        if series:
            entry["series_uid"] = series.group(1).rstrip(".")
            if series.group(2):
                entry["revision"] = int(series.group(2))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "info", role: str | None = None, log_format: str | None = None
              ) -> None:
    """Log to stderr at ``level`` (each line naming the process's ``role``, when it runs one),
    as text or one JSON object per line (``log_format``, default ``$AINODE_LOG_FORMAT``, else
    text); capture warnings; redact patient values and mask credentials in every line."""
    import os

    chosen = (log_format or os.environ.get(LOG_FORMAT_ENV) or "text").lower()
    where = f"[{role}] " if role else ""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        if chosen == "json":
            handler.setFormatter(JsonFormatter(role))
        for kind in FILTERS:
            if not any(isinstance(f, kind) for f in handler.filters):
                handler.addFilter(kind())
    if level.lower() != "debug":  # asked for: protocol detail, still without patient data
        for noisy in NOISY:
            logging.getLogger(noisy).setLevel(logging.WARNING)
