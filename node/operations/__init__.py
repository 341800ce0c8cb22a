"""TODO"""

__all__ = ["actions", "conformance", "peers", "readiness", "retention"]
