"""ainode: a PACS-integrated AI inference node."""

__version__ = "0.1.0"
