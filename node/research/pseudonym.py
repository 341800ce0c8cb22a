"""Keyed, deterministic pseudonyms (HMAC-SHA256 with the project's secret key).

The same original gives the same pseudonym under the same key, in every export and run; under
another key nothing can be linked. UIDs become ``2.25.<128-bit integer>`` (PS3.5 B.2), the
patient ``ANON-`` + 12 base-32 characters, and a patient's dates move back by one offset of 1
to 3650 days, so intervals between the patient's studies are kept.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
from pathlib import Path

MIN_KEY_BYTES = 16


class KeyMissing(Exception):
    """No usable de-identification key: the export writes nothing."""


def load_key(key_file: Path | None, environ: dict[str, str] | None = None,
             variable: str = "AINODE_DEID_KEY") -> bytes:
    """The key from ``key_file`` when given, else from the environment variable."""
    if key_file is not None:
        try:
            key = key_file.read_bytes().strip()
        except OSError as exc:
            raise KeyMissing(f"cannot read the de-identification key file {key_file}: "
                             f"{exc.strerror}") from exc
        source = f"the key file {key_file}"
    else:
        key = (os.environ if environ is None else environ).get(variable, "").strip().encode()
        source = f"the variable {variable}"
        if not key:
            raise KeyMissing(f"no de-identification key: set {variable} or research[].key_file"
                             " (a secret of at least 16 bytes, kept outside the configuration)")
    if len(key) < MIN_KEY_BYTES:
        raise KeyMissing(f"the de-identification key in {source} is shorter than "
                         f"{MIN_KEY_BYTES} bytes")
    return key


class Pseudonyms:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _digest(self, kind: str, original: str) -> bytes:
        message = kind.encode() + b"\0" + original.encode("utf-8", "surrogateescape")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        return "2.25." + str(int.from_bytes(self._digest("uid", original)[:16], "big"))

    def patient(self, original_id: str) -> str:
        code = base64.b32encode(self._digest("patient", original_id)).decode()
        return "ANON-" + code[:12]

    def date_offset(self, patient_key: str) -> dt.timedelta:
        days = int.from_bytes(self._digest("dates", patient_key)[:4], "big") % 3650 + 1
        return dt.timedelta(days=-days)


def shift_date(value: str, offset: dt.timedelta) -> str:
    """A DA value (YYYYMMDD) moved by ``offset``; '' when it is not a date."""
    try:
        day = dt.datetime.strptime(value.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    return (day + offset).strftime("%Y%m%d")


def shift_datetime(value: str, offset: dt.timedelta) -> str:
    """A DT value with its date part moved by ``offset`` (time and zone kept)."""
    text = value.strip()
    date = shift_date(text[:8], offset) if len(text) >= 8 else ""
    return date + text[8:] if date else ""
