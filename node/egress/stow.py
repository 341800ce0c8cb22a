"""STOW-RS (PS3.18 10.5) to a DICOMweb destination with dicomweb-client."""

from __future__ import annotations

from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from node.settings import Peer


def stow(peer: Peer, paths: list[Path], timeout_s: float) -> dict[str, str]:
    """Store each file; outcome per path: ``0x0000``, ``0xA900``-style refusal, or a reason."""
    with requests.Session() as session:
        if peer.token:
            session.headers["Authorization"] = f"Bearer {peer.token}"
        elif peer.username:
            session.auth = (peer.username, peer.password or "")
        client = DICOMwebClient(url=str(peer.dicomweb_url), session=session, timeout=timeout_s)
        outcomes: dict[str, str] = {}
        for path in paths:
            try:
                client.store_instances(datasets=[pydicom.dcmread(path)])
                outcomes[str(path)] = "0x0000"
            except requests.HTTPError as exc:
                code = exc.response.status_code if exc.response is not None else 0
                outcomes[str(path)] = (
                    f"HTTP {code}"
                    if code >= 500 or code in (408, 429)
                    else f"0xC000 refused: HTTP {code}"
                )
            except requests.RequestException as exc:
                outcomes[str(path)] = f"unavailable: {exc.__class__.__name__}"
    return outcomes
