"""A dicomweb-client for a configured DICOMweb peer, with its credentials (HTTP basic with
``username``/``password``, or a bearer ``token``): for STOW-RS out and WADO-RS retrieve."""

from __future__ import annotations

import requests
from dicomweb_client.api import DICOMwebClient

from node.settings import Peer


def client_for(peer: Peer, session: requests.Session, timeout_s: float) -> DICOMwebClient:
    """A client on ``session`` (the caller closes it) authenticated as the peer says."""
    token, password = peer.secret_value("token"), peer.secret_value("password")
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif peer.username:
        session.auth = (peer.username, password or "")
    return DICOMwebClient(url=str(peer.dicomweb_url), session=session, timeout=timeout_s)
