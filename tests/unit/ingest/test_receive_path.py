"""The file pynetdicom's chunked receive writes into (node.ingest.receive_path.ReceivedFile)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from node.ingest.receive_path import ReceivedFile, received_file, too_large
from node.store.durable import PART_SUFFIX


def test_each_received_file_is_new_and_in_the_spools_temporary_folder(tmp_path: Path) -> None:
    first, second = ReceivedFile(tmp_path, 0), ReceivedFile(tmp_path, 0)
    try:
        assert first.name != second.name
        for handle in (first, second):
            path = Path(handle.name)
            assert path.parent == tmp_path and path.name.endswith(PART_SUFFIX)
    finally:
        first.close()
        second.close()


def test_what_is_written_as_pynetdicom_writes_it_is_in_the_file(tmp_path: Path) -> None:
    handle = ReceivedFile(tmp_path, 0)
    handle.write(b"\0" * 128)
    handle.write(b"DICM")
    handle.file.write(b"meta")  # pynetdicom's file meta writer may use the handle's file
    handle.write(b"data")
    handle.file.flush()  # as pynetdicom does after each fragment
    assert Path(handle.name).read_bytes() == b"\0" * 128 + b"DICMmetadata"
    handle.close()
    assert handle.file.closed


def test_past_the_limit_nothing_more_is_written_and_the_request_is_too_large(
        tmp_path: Path) -> None:
    handle = ReceivedFile(tmp_path, 10)
    assert handle.write(b"12345678") == 8
    assert not handle.too_large
    assert handle.write(b"9abc") == 4  # read off the wire, dropped
    handle.close()
    assert handle.too_large
    assert Path(handle.name).read_bytes() == b"12345678"
    request = SimpleNamespace(_dataset_file=handle)
    assert received_file(request) is handle and too_large(request)


def test_a_request_received_into_memory_is_not_too_large() -> None:
    request = SimpleNamespace(_dataset_file=None)
    assert received_file(request) is None and not too_large(request)
