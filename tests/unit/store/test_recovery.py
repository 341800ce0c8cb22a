from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom

from node.store.jobs import JobStore
from node.store.recovery import recover
from node.store.spool import Spool

CT = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "ct-abdomen" / "1-001.dcm"


def test_unindexed_spool_file_is_reindexed(
    tmp_path: Path, new_store: Callable[[], JobStore]
) -> None:
    spool, store = Spool(tmp_path / "spool"), new_store()
    ds = pydicom.dcmread(CT, stop_before_pixels=True)
    target = spool.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    spool.write(target, [CT.read_bytes()])  # written, then "crashed" before indexing
    (spool.tmp_dir / "half.part").write_bytes(b"x")
    (target.parent / "9.9.dcm").write_bytes(b"not dicom")

    report = recover(spool, store, now=5.0)
    assert (report.reindexed, report.temporaries_removed, report.unreadable) == (1, 1, 1)
    assert store.instance_paths() == [str(target)]
    assert recover(spool, store, now=6.0).reindexed == 0


def test_a_receiver_started_alone_leaves_recent_files_to_the_others(
    tmp_path: Path, new_store: Callable[[], JobStore]
) -> None:
    """On a spool shared with running receivers, recovery with ``settle_s`` touches only
    files older than that: a younger file may be another receiver's, between its rename and
    its commit, and a younger temporary may still be written."""
    import os
    import time

    spool, store = Spool(tmp_path / "spool"), new_store()
    ds = pydicom.dcmread(CT, stop_before_pixels=True)
    target = spool.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    spool.write(target, [CT.read_bytes()])
    fresh, stale = spool.tmp_dir / "fresh.part", spool.tmp_dir / "stale.part"
    fresh.write_bytes(b"x")
    stale.write_bytes(b"x")
    now = time.time()
    os.utime(stale, (now - 600, now - 600))
    report = recover(spool, store, now=now, settle_s=300)
    assert (report.reindexed, report.temporaries_removed) == (0, 1)
    assert fresh.exists() and not stale.exists()
    os.utime(target, (now - 600, now - 600))
    assert recover(spool, store, now=now, settle_s=300).reindexed == 1
