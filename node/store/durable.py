"""The one durable file writer: unique temporary, fdatasync, rename, directory fsync.

After :func:`write_atomically` returns, the file exists under its final name with all its
content, or (after a crash before that) not at all: a partial file never carries a final name,
and two writers of the same file (say a job re-run elsewhere) never share a temporary.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_names = itertools.count()
PART_SUFFIX = ".part"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(final: Path, tmp_dir: Path | None = None) -> Path:
    """A temporary beside ``final`` (or in ``tmp_dir``, same filesystem) no other writer uses."""
    unique = f"{os.getpid()}.{threading.get_ident()}.{next(_names)}"
    return (tmp_dir or final.parent) / f".{final.name}.{unique}{PART_SUFFIX}"


def replace(source: Path, final: Path, make_dir: Callable[[Path], None] | None = None) -> None:
    """``os.replace``; when ``final``'s folder is gone and ``make_dir`` is given, make it
    and try again (a few times: another process may be removing empty folders)."""
    for attempt in range(3):
        try:
            os.replace(source, final)
            return
        except FileNotFoundError:
            if make_dir is None or attempt == 2 or not source.exists():
                raise
            make_dir(final.parent)


def write_atomically(
    final: Path,
    write: Callable[[BinaryIO], object],
    *,
    fsync: bool = True,
    tmp_dir: Path | None = None,
    make_dir: Callable[[Path], None] | None = None,
) -> int:
    """Write ``final`` through ``write(handle)``; returns the size in bytes. ``make_dir``:
    how to make ``final``'s folder again should it vanish meanwhile (retention removes
    empty folders)."""
    tmp = temporary_name(final, tmp_dir)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            size = handle.tell()
            if fsync:
                os.fdatasync(handle.fileno())
        replace(tmp, final, make_dir)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(final.parent)
    return size


def free_disk_bytes(folder: Path) -> int:
    """Free space where ``folder`` is, or will be (its nearest existing parent)."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free
