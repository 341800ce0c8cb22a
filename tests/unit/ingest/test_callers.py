"""Who may open an association: the policy alone (the real rejection is in
tests/integration/test_callers.py)."""

from __future__ import annotations

from typing import Any

from node.ingest.callers import CallerPolicy
from node.settings import Settings


def _policy(**node: Any) -> CallerPolicy:
    return CallerPolicy(Settings.model_validate({
        "node": node,
        "peers": [
            {"name": "CT", "ae_title": "CT1", "host": "10.1.2.3", "port": 104},
            {"name": "MR", "ae_title": "MR1", "host": "mr.example", "port": 104,
             "hosts": ["10.1.4.0/24", "localhost"]},
            {"name": "CT-B", "ae_title": "CT1", "host": "10.1.2.4", "port": 104},
        ]}))


def test_known_titles_from_anywhere_unless_hosts_are_checked() -> None:
    policy = _policy()
    assert policy.refusal("CT1", "192.168.0.9") is None
    assert policy.refusal("NOBODY", "10.1.2.3") == "calling AE title not in peers"
    assert _policy(accept_unknown_callers=True).refusal("NOBODY", "10.1.2.3") is None


def test_checked_hosts_are_the_peer_host_or_its_hosts_list() -> None:
    policy = _policy(check_caller_host=True)
    assert policy.refusal("CT1", "10.1.2.3") is None
    assert policy.refusal("CT1", "10.1.2.4") is None  # a second peer with the same title
    refused = policy.refusal("CT1", "10.1.2.5")
    assert refused is not None and "10.1.2.3, 10.1.2.4" in refused
    assert policy.refusal("MR1", "10.1.4.200") is None  # a network
    assert policy.refusal("MR1", "127.0.0.1") is None  # a name, resolved
    assert policy.refusal("MR1", "10.1.5.1") is not None
    assert policy.refusal("MR1", "not-an-address") is not None
