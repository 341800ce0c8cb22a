"""STOW-RS bodies as a client sends them (multipart/related, PS3.18 10.5)."""

from __future__ import annotations

import uuid


def multipart(*parts: bytes, content_type: str = "application/dicom") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: " + content_type.encode()
                    + b"\r\n\r\n" + part + b"\r\n" for part in parts)
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'
