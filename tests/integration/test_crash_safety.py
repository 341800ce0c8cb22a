"""SIGKILL the node mid-transfer: every acknowledged instance survives and its series completes."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.support.environment import STORESCU, ct_files, require, wait_for
from tests.support.node import storescu_acknowledged

pytestmark = pytest.mark.integration


def test_acknowledged_instances_survive_sigkill(node_factory) -> None:  # type: ignore[no-untyped-def]
    require(STORESCU)
    node = node_factory(series={"quiet_seconds": 1}).start()
    files = ct_files()
    acked_files: list[Path] = []
    for sent in storescu_acknowledged(node, files, timeout=30):
        acked_files.append(sent)
        if len(acked_files) == 40:
            node.kill()  # SIGKILL, mid-association
    assert not node.alive

    assert len(acked_files) >= 40
    assert len(acked_files) < len(files), "the kill must interrupt the transfer"

    node.start()  # same data_dir: recovery, then the series completes
    stored = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f
              for f in node.stored_files()}
    for sent in acked_files:
        original = pydicom.dcmread(sent)
        uid = str(original.SOPInstanceUID)
        assert uid in stored, f"acknowledged instance {sent} lost"
        assert pydicom.dcmread(stored[uid]).PixelData == original.PixelData
        assert node.query("SELECT COUNT(*) FROM instances WHERE sop_uid=?", uid) == [(1,)]
    assert not list((node.data_dir / "spool" / ".tmp").iterdir()), "partial files cleaned up"
    assert wait_for(lambda: node.query("SELECT state FROM series") == [("complete",)], 15), (
        node.query("SELECT * FROM series"), node.log()[-2000:])
