"""TODO"""

__all__ = ["node", "supervisor"]
