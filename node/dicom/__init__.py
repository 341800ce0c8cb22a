"""TODO"""

__all__ = ["dicomweb", "files", "scu", "stow", "tls"]
