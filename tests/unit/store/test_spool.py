from __future__ import annotations

from pathlib import Path

import pytest

from node.store.spool import Spool, path_component


def test_well_formed_uids_are_kept_and_others_hashed() -> None:
    assert path_component("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    for hostile in ("../../etc/passwd", "1.2/3", "", "1.2." + "9" * 70):
        safe = path_component(hostile)
        assert "/" not in safe and ".." not in safe and safe.startswith("x")
    assert path_component("../a") != path_component("../b")


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    target = spool.path_for("1.2", "1.2.3", "1.2.3.4")
    assert spool.write(target, [b"abc", b"def"]) == 6
    assert target.read_bytes() == b"abcdef"
    spool.write(target, [b"new"])
    assert target.read_bytes() == b"new"
    assert list(spool.iter_files()) == [target]
    assert list(spool.tmp_dir.iterdir()) == []


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    target = spool.path_for("1.2", "1.2.3", "1.2.3.4")

    def chunks():  # type: ignore[no-untyped-def]
        yield b"partial"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        spool.write(target, chunks())
    assert not target.exists()
    assert list(spool.tmp_dir.iterdir()) == []


def test_remove_temporaries(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (spool.tmp_dir / "x.part").write_bytes(b"half")
    assert spool.remove_temporaries() == 1
    assert list(spool.iter_files()) == []


def test_folders_removed_by_retention_are_made_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first = spool.path_for("1.2", "1.2.3", "1.2.3.4")
    spool.write(first, [b"abc"])
    first.unlink()
    first.parent.rmdir()  # what retention does with a series' emptied folders
    first.parent.parent.rmdir()
    assert spool.write(first, [b"again"]) == 5
    assert first.read_bytes() == b"again"
    received = spool.tmp_dir / "rx-1.part"
    received.write_bytes(b"adopted")
    second = spool.path_for("1.2", "1.2.3", "1.2.3.5")
    first.unlink()
    first.parent.rmdir()
    first.parent.parent.rmdir()
    assert spool.adopt(received, second) == 7 and second.read_bytes() == b"adopted"
