"""Mechanisms with no knowledge of DICOM or of the node: retry policy (:mod:`.retry`), loops
that keep themselves alive (:mod:`.loops`), logging with redaction (:mod:`.logs`), metrics
(:mod:`.metrics`), process helpers (:mod:`.process`). Imports nothing of the node."""

__all__ = ["logs", "loops", "metrics", "process", "retry"]
