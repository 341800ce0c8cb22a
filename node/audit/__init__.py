"""TODO"""

__all__ = ["atna", "trail"]
