"""TODO"""

__all__ = ["execute", "orchestrator", "rules", "workers"]
