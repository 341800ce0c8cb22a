"""STOW-RS (PS3.18 10.5) to a DICOMweb destination with dicomweb-client."""

from __future__ import annotations

from pathlib import Path

import pydicom
import requests

from node.dicom.dicomweb import client_for
from node.domain import Outcome
from node.settings import Peer


def _http_outcome(code: int) -> Outcome:
    """Credentials (401/403: a lockout or expired password is fixed by a person), timeouts,
    throttling and server errors are retried with backoff (PS3.18 8.6.2, RFC 9110); any other
    4xx is a refusal that will repeat."""
    if code in (401, 403):
        return Outcome.retry(f"unauthorized: HTTP {code} (check the peer's credentials)")
    if code >= 500 or code in (408, 429):
        return Outcome.retry(f"unavailable: HTTP {code}")
    return Outcome.dead(f"refused: HTTP {code}")


def stow(peer: Peer, paths: list[Path], timeout_s: float) -> dict[str, Outcome]:
    """Store each file; an outcome per path. After a failure that concerns the destination
    rather than the object (down, unauthorised, overloaded) the remaining files are not tried
    in this pass."""
    with requests.Session() as session:
        client = client_for(peer, session, timeout_s)
        outcomes: dict[str, Outcome] = {}
        for index, path in enumerate(paths):
            try:
                client.store_instances(datasets=[pydicom.dcmread(path)])
                outcomes[str(path)] = Outcome.sent()
                continue
            except requests.HTTPError as exc:
                code = exc.response.status_code if exc.response is not None else 0
                outcomes[str(path)] = _http_outcome(code)
            except requests.RequestException as exc:
                outcomes[str(path)] = Outcome.retry(f"unavailable: {exc.__class__.__name__}")
            if outcomes[str(path)].verdict == "retry":
                for later in paths[index + 1 :]:
                    outcomes[str(later)] = Outcome.retry(
                        f"not sent: {outcomes[str(path)].reason}")
                break
    return outcomes
