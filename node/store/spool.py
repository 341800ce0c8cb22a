"""The spool: received instances as DICOM Part 10 files, written atomically and durably.

Write to a temporary file on the same filesystem, ``fsync`` it, ``rename`` it into place and
``fsync`` the directory: after :meth:`Spool.write` returns, a crash or power loss never leaves a
partial file under its final name, and the file survives. Layout: ``<study>/<series>/<sop>.dcm``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from node.store.durable import fsync_dir, replace, write_atomically

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
TMP_DIR_NAME = ".tmp"
SUFFIX = ".dcm"


def well_formed_uid(uid: str) -> bool:
    """Whether ``uid`` is a UID as PS3.5 9.1 writes one (digits and dots, at most 64)."""
    return len(uid) <= 64 and bool(_UID.match(uid))


def path_component(uid: str) -> str:
    """A UID as a safe file name: itself when well-formed (PS3.5 9.1), else a hash of it.

    Malformed UIDs do occur in the wild; hashing keeps them storable without letting a
    crafted value such as ``../..`` escape the spool.
    """
    if len(uid) <= 64 and _UID.match(uid):
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


class InstanceStorage(Protocol):
    """What the receiver, recovery and the workers need of instance storage.

    :class:`Spool` keeps instances as files on a POSIX filesystem, local or shared by several
    nodes (NFS, CephFS, a ReadWriteMany volume). An S3-compatible object store could stand
    behind this interface too: instances gathered locally per series (``tmp_dir``,
    ``path_for``) and put as one object per series once it is complete, not one per
    instance, and workers reading a series through a local cache.
    """

    tmp_dir: Path

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path: ...

    def write(self, final: Path, chunks: Iterable[bytes]) -> int: ...

    def adopt(self, received: Path, final: Path) -> int: ...

    def iter_files(self) -> Iterator[Path]: ...

    def remove_temporaries(self, modified_before: float | None = None) -> int: ...

    def free_bytes(self) -> int: ...


class Spool:
    """Durable instance files under ``root`` (an :class:`InstanceStorage`)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self.tmp_dir = root / TMP_DIR_NAME
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return (
            self.root
            / path_component(study_uid)
            / path_component(series_uid)
            / (path_component(sop_uid) + SUFFIX)
        )

    def write(self, final: Path, chunks: Iterable[bytes]) -> int:
        """Write ``chunks`` atomically to ``final`` (replacing any old copy); returns the size."""
        if final.parent not in self._known_dirs:
            self._make_dirs(final.parent)

        def _write(handle: BinaryIO) -> None:
            for chunk in chunks:
                handle.write(chunk)

        return write_atomically(final, _write, fsync=self.fsync, tmp_dir=self.tmp_dir,
                                make_dir=self._make_dirs_again)

    def sync_data(self, path: Path) -> None:
        """``fdatasync`` a file (when durability is on)."""
        if not self.fsync:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def adopt(self, received: Path, final: Path) -> int:
        """Durably move a complete file received under :attr:`tmp_dir` to ``final``.

        The file stays under its temporary name until it is on disk, so a crash never leaves a
        partial file under a final name. Returns its size.
        """
        directory = final.parent
        if directory not in self._known_dirs:
            self._make_dirs(directory)
        self.sync_data(received)
        size = received.stat().st_size
        replace(received, final, self._make_dirs_again)
        if self.fsync:
            fsync_dir(directory)
        return size

    def _make_dirs_again(self, directory: Path) -> None:
        """A folder this spool made is gone (retention removed it when it was empty)."""
        self._known_dirs.discard(directory)
        self._make_dirs(directory)

    def _make_dirs(self, directory: Path) -> None:
        missing = [p for p in (directory, *directory.parents) if not p.exists()]
        directory.mkdir(parents=True, exist_ok=True)
        if self.fsync:
            for created in reversed(missing):
                fsync_dir(created.parent)
        self._known_dirs.add(directory)

    def iter_files(self) -> Iterator[Path]:
        """Every stored instance file (not temporaries)."""
        for study in self.root.iterdir():
            if study.name == TMP_DIR_NAME or not study.is_dir():
                continue
            for series in study.iterdir():
                if series.is_dir():
                    yield from series.glob("*" + SUFFIX)

    def remove_temporaries(self, modified_before: float | None = None) -> int:
        """Delete partial files left by a crash mid-write; they were never acknowledged.
        With ``modified_before``, only those untouched since (other receivers sharing the
        spool may be writing the newer ones)."""
        removed = 0
        for leftover in self.tmp_dir.iterdir():
            try:
                if modified_before is not None and leftover.stat().st_mtime >= modified_before:
                    continue
            except FileNotFoundError:
                continue
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free
