"""The Storage SCP against the real dcmtk modality tools (echoscu, storescu)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from tests.support.environment import DATA, DCMTK_ENV, ECHOSCU, ct_files, require, wait_for
from tests.support.node import NodeProcess, ainode_send, send_raw, storescu

pytestmark = pytest.mark.integration


def _by_sop(files: list[Path]) -> dict[str, Path]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}


def test_echoscu_gets_success(node: NodeProcess) -> None:
    require(ECHOSCU)
    result = subprocess.run(
        [ECHOSCU, "-v", "-aet", "ECHOSCU", "-aec", "AINODE", "127.0.0.1", str(node.port)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


@pytest.mark.parametrize("receive_path", ["tuned", "stock"])
def test_all_ct_slices_arrive_byte_identical_and_series_completes(
    node_factory, receive_path: str  # type: ignore[no-untyped-def]
) -> None:
    """Both receive paths: streamed to disk with event wake-ups (default), and pynetdicom's own."""
    require("/usr/bin/storescu")
    tuned = receive_path == "tuned"
    node = node_factory(node={"receive_to_disk": tuned, "event_driven_reactor": tuned}).start()
    result = storescu(node, *ct_files())
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert output.count("Received Store Response (Success)") == 134

    stored = _by_sop(node.stored_files())
    sent = _by_sop(ct_files())
    assert stored.keys() == sent.keys()
    for uid, source in sent.items():
        original = pydicom.dcmread(source)
        copy = pydicom.dcmread(stored[uid])
        assert copy.PixelData == original.PixelData
        assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert copy.SeriesInstanceUID == original.SeriesInstanceUID
    assert list((node.data_dir / "spool" / ".tmp").iterdir()) == []

    state = wait_for(lambda: node.query("SELECT state, instance_count, completion_reason "
                                        "FROM series WHERE revision=1"), 10)
    assert state and state[0][1] == 134
    complete = wait_for(
        lambda: node.query("SELECT state, completion_reason FROM series")[0][0] == "complete", 10
    )
    assert complete, node.query("SELECT * FROM series")
    assert node.query("SELECT completion_reason FROM series") == [("quiet_period",)]


def test_late_instance_opens_a_new_revision_and_duplicates_are_counted(
    node: NodeProcess,
) -> None:
    files = ct_files()
    assert storescu(node, *files[:10]).returncode == 0
    assert wait_for(lambda: node.query("SELECT state FROM series") == [("complete",)], 10)
    # a resend of one slice after completion + a new slice: revision 2, one duplicate
    assert storescu(node, files[0], files[10]).returncode == 0
    rows = node.query("SELECT revision, instance_count, duplicate_count FROM series "
                      "ORDER BY revision")
    assert rows == [(1, 10, 0), (2, 2, 1)]
    assert len(node.stored_files()) == 11


# dcmtk storescu proposes one compressed transfer syntax per run, chosen by option
PROPOSE_OPTION = {
    "JPEG2000": "-xw", "JPEG2000Lossless": "-xv", "JPEGBaseline": "-xy", "JPEGExtended": "-xx",
    "JPEGLS": "-xu", "JPEGLSLossless": "-xt", "JPEGLosslessSV1": "-xs", "RLELossless": "-xr",
    "LittleEndianExplicit": "-x=", "LittleEndianImplicit": "-x=",
}


@pytest.mark.parametrize("folder", sorted(PROPOSE_OPTION))
def test_compressed_files_are_accepted_as_sent(node: NodeProcess, folder: str) -> None:
    files = sorted((DATA / "compressed" / folder).glob("*.dcm"))
    assert files
    result = storescu(node, *files, extra=(PROPOSE_OPTION[folder], "--no-halt"))
    responses = _responses_by_file(result.stdout + result.stderr)
    sent = [f for f in files if str(f) in responses]
    assert len(sent) >= len(files) - 3, responses  # dcmtk itself cannot read a few odd files
    assert all(responses[str(f)] == "Success" for f in sent), responses
    _assert_stored_as_sent(node, sent)


def _responses_by_file(output: str) -> dict[str, str]:
    """storescu -v output -> {file: response status} for each file it actually sent."""
    responses: dict[str, str] = {}
    for block in output.split("Sending file: ")[1:]:
        name = block.splitlines()[0].strip()
        found = re.search(r"Received Store Response \(([^)]*)\)", block)
        if found:
            responses[name] = found.group(1)
        elif "Sending Store Request" in block:
            # sent but unanswered: only acceptable when dcmtk itself failed to encode it
            assert re.search(r"E: 0006:02\d\d DIMSE (Badly formed|Failed to send)", block), block
    return responses


def test_jpeg_lossless_process14_is_accepted_as_sent(node: NodeProcess) -> None:
    """dcmtk cannot propose JPEG Lossless process 14 (non-SV1); send with the node's own SCU."""
    files = sorted((DATA / "compressed" / "JPEGLossless").glob("*.dcm"))
    assert files
    result = ainode_send(node, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    _assert_stored_as_sent(node, files)


def _frames(dataset: pydicom.Dataset) -> list[bytes]:
    """Pixel data as sent: encapsulated frames (dcmtk may rebuild the offset table and pad odd
    fragments when it sends, so trailing padding is ignored), or the native bytes."""
    if not dataset.file_meta.TransferSyntaxUID.is_encapsulated:
        return [dataset.PixelData]
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    return [frame.rstrip(b"\0") for frame in
            generate_frames(dataset.PixelData, number_of_frames=frames)]


def _assert_stored_as_sent(node: NodeProcess, sent: list[Path]) -> None:
    stored = _by_sop(node.stored_files())
    last_sent = {str(pydicom.dcmread(f, stop_before_pixels=True, force=True).SOPInstanceUID)
                 .strip(): f for f in sent}  # a later file with the same UID replaces earlier
    assert stored.keys() == last_sent.keys()
    for uid, source in last_sent.items():
        original = pydicom.dcmread(source, force=True)
        copy = pydicom.dcmread(stored[uid], force=True)
        assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, source
        if "PixelData" in original:
            assert _frames(copy) == _frames(original), source
    transfer_syntaxes = {str(pydicom.dcmread(f, stop_before_pixels=True, force=True)
                             .file_meta.TransferSyntaxUID) for f in sent}
    stored_syntaxes = {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta
                           .TransferSyntaxUID) for f in stored.values()}
    assert stored_syntaxes == transfer_syntaxes
    assert node.alive


VALID_STORE_STATUS = re.compile(r"^(Success|Warning.*|Out of Resources.*|Data Set does not match"
                                r".*|Cannot understand.*|Error.*|Refused.*|Failed.*)$", re.I)


def test_bad_input_gets_a_status_and_the_node_stays_up(node: NodeProcess) -> None:
    """Each malformed file, sent by dcmtk and raw (bytes as on disk) by pynetdicom, is answered
    with a success or a proper failure status, and the node keeps serving."""
    files = sorted(p for p in (DATA / "bad-input" / "pydicom").iterdir() if p.is_file())
    answered: dict[str, list[str]] = {}
    for bad in files:
        result = storescu(node, bad, extra=("-R",), timeout=60)
        found = re.findall(r"Received Store Response \(([^)]*)\)", result.stdout + result.stderr)
        raw = send_raw(node, bad)
        raw_status = None if raw is None else int(raw.Status)
        statuses = found + ([f"0x{raw_status:04X}"] if raw_status is not None else [])
        for status in found:
            assert VALID_STORE_STATUS.match(status), (bad.name, status)
        if raw_status is not None:
            assert raw_status == 0 or 0xA700 <= raw_status <= 0xCFFF, (bad.name, raw_status)
        answered[bad.name] = statuses
        assert node.alive, f"node died on {bad.name}"
    assert sum(1 for s in answered.values() if s) >= 15, answered
    refused = [name for name, s in answered.items() if any(x.startswith("0xC") for x in s)]
    assert refused, answered  # truly unparseable data is refused, not stored
    assert "Traceback" not in node.log()
    assert list((node.data_dir / "spool" / ".tmp").iterdir()) == [], "refused data not kept"
    # the node still serves good data afterwards
    assert storescu(node, ct_files()[0]).returncode == 0


def test_unknown_calling_ae_is_rejected(node: NodeProcess) -> None:
    result = storescu(node, ct_files()[0], calling="INTRUDER")
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stdout + result.stderr
    assert node.stored_files() == []


def test_wrong_called_ae_is_rejected(node: NodeProcess) -> None:
    result = storescu(node, ct_files()[0], called="NOTME")
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stdout + result.stderr
    assert node.stored_files() == []


def test_a_known_title_from_another_host_is_rejected_when_hosts_are_checked(
        node_factory) -> None:  # type: ignore[no-untyped-def]
    """node.check_caller_host: STORESCU may call from 127.0.0.0/8 (its hosts list), ECHOSCU
    only from 10.9.9.9 (its host); both calls come from 127.0.0.1."""
    require("/usr/bin/storescu")
    node = node_factory(node={"check_caller_host": True}, peers=[
        {"name": "MODALITY", "ae_title": "STORESCU", "host": "10.9.9.8", "port": 104,
         "hosts": ["127.0.0.0/8"]},
        {"name": "ECHO", "ae_title": "ECHOSCU", "host": "10.9.9.9", "port": 104},
    ]).start()
    assert storescu(node, ct_files()[0]).returncode == 0
    refused = storescu(node, ct_files()[1], calling="ECHOSCU")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    assert len(node.stored_files()) == 1
    assert ("association from 'ECHOSCU' at 127.0.0.1 rejected: not from the peer's "
            "configured hosts (10.9.9.9)") in node.log()
    trail = _audit(node)  # the audit trail has both: who, from where, why
    def line_with(*words: str) -> bool:
        return any(all(w in line for w in words) for line in trail.splitlines())
    assert line_with("ECHOSCU", "association rejected",
                     "from 127.0.0.1: not from the peer's configured hosts"), trail
    assert line_with("STORESCU", "association released",
                     "from 127.0.0.1: 1 instance(s) stored"), trail


def _audit(node: NodeProcess) -> str:
    ainode = str(Path(sys.executable).parent / "ainode")
    result = subprocess.run([ainode, "audit", "--config", str(node.config_path)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "250"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_without_peers_every_caller_is_rejected(node_factory) -> None:  # type: ignore[no-untyped-def]
    """As the start-up warning says (before, an empty peer list let everyone in)."""
    require("/usr/bin/storescu")
    node = node_factory(peers=[]).start()
    assert storescu(node, ct_files()[0]).returncode != 0
    assert node.stored_files() == []
    assert "every caller will be rejected" in node.log()


def test_unknown_callers_accepted_when_configured(node_factory) -> None:  # type: ignore[no-untyped-def]
    require("/usr/bin/storescu")
    node = node_factory(node={"accept_unknown_callers": True}).start()
    result = storescu(node, ct_files()[0], calling="ANYONE")
    assert result.returncode == 0, result.stderr
    assert len(node.stored_files()) == 1


def test_disk_floor_answers_out_of_resources(node_factory) -> None:  # type: ignore[no-untyped-def]
    require("/usr/bin/storescu")
    node = node_factory(node={"min_free_disk_mb": 10**9}).start()
    result = storescu(node, ct_files()[0])
    output = result.stdout + result.stderr
    assert "Received Store Response (Refused: OutOfResources)" in output, output
    assert node.stored_files() == []
    assert "free disk below node.min_free_disk_mb" in node.log()


@pytest.mark.parametrize("receive_to_disk", [True, False])
def test_an_instance_over_max_instance_mb_is_refused_and_not_kept(
        node_factory, tmp_path: Path, receive_to_disk: bool) -> None:  # type: ignore[no-untyped-def]
    """A 2 MB CT image (four slices' pixels, new UIDs) against a 1 MB limit, then a 0.5 MB CT
    slice on the same association: the first refused (0xA700) and not kept, the second
    stored."""
    require("/usr/bin/storescu")
    node = node_factory(node={"max_instance_mb": 1, "receive_to_disk": receive_to_disk}).start()
    source = pydicom.dcmread(ct_files()[0])
    source.Rows *= 4
    source.PixelData = source.PixelData * 4
    source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    large = tmp_path / "large.dcm"
    source.save_as(large)
    assert large.stat().st_size > 2 * 1024 * 1024
    result = storescu(node, large, ct_files()[0], extra=("--no-halt",))
    output = result.stdout + result.stderr
    assert "Received Store Response (Refused: OutOfResources)" in output, output
    assert "Received Store Response (Success)" in output, output
    slice_uid = pydicom.dcmread(ct_files()[0], stop_before_pixels=True).SOPInstanceUID
    assert [f.name for f in node.stored_files()] == [f"{slice_uid}.dcm"]
    assert list((node.data_dir / "spool" / ".tmp").iterdir()) == []
    assert "larger than node.max_instance_mb (1 MB" in node.log()


def test_sop_class_mismatch_answers_a900(node: NodeProcess, tmp_path: Path) -> None:
    source = pydicom.dcmread(ct_files()[0])
    source.SOPInstanceUID = generate_uid()
    source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
    source.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    mismatched = tmp_path / "mismatch.dcm"
    source.save_as(mismatched)  # keeps the (mismatching) meta as set

    status = send_raw(node, mismatched)
    assert status is not None
    assert status.Status == 0xA900
    assert "SOP Class UID differs" in status.ErrorComment
    assert node.stored_files() == []


def test_unparseable_dataset_answers_cannot_understand(node: NodeProcess, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.dcm"
    source = pydicom.dcmread(ct_files()[0])
    source.save_as(garbage, enforce_file_format=True)
    raw = bytearray(garbage.read_bytes())
    # corrupt the length of the first dataset element after the meta group
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    raw[meta_end + 4: meta_end + 8] = (0xFFFFFFF0).to_bytes(4, "little")
    garbage.write_bytes(bytes(raw))

    status = send_raw(node, garbage)
    assert status is not None
    assert status.Status in (0xC210, 0xA900), status
    assert node.alive


def test_below_the_disk_floor_0xa700_and_storing_again_once_space_returns(
        node_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The floor set 300 MB under today's free space; a 600 MB file then takes the disk
    below it: C-STORE answers 0xA700 and keeps nothing; once the file is gone, the same
    instance is stored."""
    import shutil

    from tests.support.environment import free_port, wait_port
    from tests.support.node import http_call

    require("/usr/bin/storescu")
    free_mb = shutil.disk_usage(tmp_path).free // 2**20
    http_port = free_port()
    node = node_factory(node={"min_free_disk_mb": free_mb - 300, "http_port": http_port}
                        ).start()
    wait_port(http_port, timeout=60, proc=node.proc)
    assert http_call(http_port, "/readyz", timeout=30)[0] == 200
    filler = node.data_dir / "filler"
    with open(filler, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, 600 * 2**20)
    try:
        refused = storescu(node, ct_files()[0])
        assert "Received Store Response (Refused: OutOfResources)" in refused.stdout + \
            refused.stderr
        assert node.stored_files() == []
        status, ready = http_call(http_port, "/readyz", timeout=30)  # not ready meanwhile
        assert status == 503 and "min_free_disk_mb" in ready["failed"]["disk"], ready
    finally:
        filler.unlink()
    stored = storescu(node, ct_files()[0])
    assert stored.returncode == 0 and "(Success)" in stored.stdout + stored.stderr
    assert len(node.stored_files()) == 1
    assert http_call(http_port, "/readyz", timeout=30)[0] == 200
