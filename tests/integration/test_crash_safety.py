"""SIGKILL the node mid-transfer: every acknowledged instance survives and its series completes."""

from __future__ import annotations

import subprocess

import pydicom
import pytest

from tests.conftest import DCMTK_ENV, STORESCU, ct_files, require, wait_for

pytestmark = pytest.mark.integration


def test_acknowledged_instances_survive_sigkill(node_factory) -> None:  # type: ignore[no-untyped-def]
    require(STORESCU)
    node = node_factory(series={"quiet_seconds": 1}).start()
    files = ct_files()
    lines: list[str] = []
    acknowledged = 0
    with subprocess.Popen(
        [STORESCU, "-v", "-aet", "STORESCU", "-aec", "AINODE", "127.0.0.1", str(node.port),
         *map(str, files)],
        env=DCMTK_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as sender:
        assert sender.stdout is not None
        for line in sender.stdout:
            lines.append(line)
            if "Received Store Response (Success)" in line:
                acknowledged += 1
                if acknowledged == 40:
                    node.kill()  # SIGKILL, mid-association
                    break
        lines.extend(sender.stdout)
        sender.wait(timeout=30)
    assert not node.alive

    acked_files = []
    current = None
    for line in lines:
        if line.startswith("I: Sending file: "):
            current = line.removeprefix("I: Sending file: ").strip()
        elif "Received Store Response (Success)" in line and current:
            acked_files.append(current)
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
