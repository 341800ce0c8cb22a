"""Instances in: the Storage SCP (:mod:`.dimse`, with the pre-association :mod:`.gate` and
the callers' checks in :mod:`.callers`), STOW-RS (:mod:`.stow`), retrieval from a PACS
(:mod:`.retrieve`); each instance kept durably through :mod:`.intake`."""

__all__ = ["callers", "dimse", "gate", "intake", "receive_path", "retrieve", "stow"]
