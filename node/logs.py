"""Logging for every ``ainode`` process: one format, Python warnings routed through logging,
and no patient data from other libraries' messages.

Our own modules log UIDs, AE titles and reasons, never names or IDs. Libraries are not so
careful: highdicom's person-name warning quotes the patient's name, pydicom's value warnings
quote the offending value. :class:`RedactQuotedValues` replaces every quoted value in records
that do not come from ``node`` (warnings included, once :func:`configure` routes them through
logging) with ``<redacted>``, keeping the rest of the message for diagnosis.
"""

from __future__ import annotations

import logging
import re
import sys

_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")
REDACTED = "<redacted>"
NOISY = ("pynetdicom", "highdicom")


class RedactQuotedValues(logging.Filter):
    """Redact quoted values in records from outside the ``node`` package."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "node" or record.name.startswith("node."):
            return True
        message = record.getMessage()
        redacted = _QUOTED.sub(f'"{REDACTED}"', message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


class QuietNetworkErrors(logging.Filter):
    """pynetdicom logs a peer that stalls or drops mid-PDU with a traceback; a client's
    network fault is one warning line, not a stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.name.startswith("pynetdicom") and isinstance(error, OSError):
            record.msg, record.args = f"network error: {error.__class__.__name__}: {error}", ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure(level: str = "info", role: str | None = None) -> None:
    """Log to stderr at ``level`` (each line naming the process's ``role``, when it runs one);
    capture warnings; redact other libraries' quoted values."""
    where = f"[{role}] " if role else ""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        for kind in (QuietNetworkErrors, RedactQuotedValues):
            if not any(isinstance(f, kind) for f in handler.filters):
                handler.addFilter(kind())
    if level.lower() != "debug":  # asked for: protocol detail, still without patient data
        for noisy in NOISY:
            logging.getLogger(noisy).setLevel(logging.WARNING)
