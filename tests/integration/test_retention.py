"""Retention in a running node: a settled series' files go, with an audit line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.environment import STORESCU, ct_files, require, wait_for
from tests.support.node import storescu

pytestmark = pytest.mark.integration


def test_a_settled_series_is_removed_and_the_removal_audited(node_factory: Any) -> None:
    require(STORESCU)
    node = node_factory(retention={"days": 0, "interval_s": 0.5}).start()
    result = storescu(node, *ct_files()[:4])
    assert result.returncode == 0, result.stderr
    assert wait_for(lambda: node.query("SELECT action FROM audit WHERE action='deleted'"),
                    60), (node.query("SELECT * FROM series"), node.log()[-2000:])
    assert wait_for(lambda: node.stored_files() == [], 30, 0.1), node.stored_files()
    assert node.query("SELECT COUNT(*) FROM instances") == [(0,)]
    assert node.query("SELECT route_state, purged_at IS NOT NULL FROM series") == [
        ("skipped", 1)]
    ainode = str(Path(sys.executable).parent / "ainode")
    trail = subprocess.run([ainode, "audit", "--config", str(node.config_path)],
                           capture_output=True, text=True, timeout=60)
    assert "deleted" in trail.stdout and "4 instance file(s)" in trail.stdout, trail.stdout
    # the same study sent again is new: received, kept until it settles, removed again
    result = storescu(node, *ct_files()[:4])
    assert result.returncode == 0, result.stderr
    assert wait_for(lambda: node.query(
        "SELECT COUNT(*) FROM audit WHERE action='deleted'") == [(2,)], 60), node.log()[-2000:]
    assert node.query("SELECT COUNT(*) FROM series") == [(2,)]
