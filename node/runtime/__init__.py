"""TODO"""

__all__ = ["logs", "loops", "metrics", "retry"]
