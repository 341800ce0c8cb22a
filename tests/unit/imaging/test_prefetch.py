"""Loading a series first asks the kernel to read all its files ahead."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.imaging import volume


def test_every_file_is_advised_before_the_first_is_read(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    files = [tmp_path / f"{n}.dcm" for n in range(3)]
    for path in files:
        path.write_bytes(b"not dicom")
    advised: list[str] = []
    real_advise = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append(os.readlink(f"/proc/self/fd/{fd}"))
        assert advice == os.POSIX_FADV_WILLNEED and (offset, length) == (0, 0)
        real_advise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    with pytest.raises(volume.VolumeError):  # then the reads report what they find
        volume.load_series([*map(str, files), str(tmp_path / "missing.dcm")])
    assert advised == [str(path) for path in files]  # the missing one is skipped quietly
