"""Pixels and geometry: a series loaded into one volume in patient space
(:mod:`.volume`), with the checks that refuse broken geometry."""

__all__ = ["volume"]
