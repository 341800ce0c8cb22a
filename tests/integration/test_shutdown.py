"""SIGTERM is graceful: no new association is accepted, the one in progress finishes with
every instance acknowledged and recorded, and the node exits 0."""

from __future__ import annotations

import socket
from typing import Any

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tests.support.environment import ct_files, wait_for

pytestmark = pytest.mark.integration


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_sigterm_lets_the_open_association_finish_then_exits_zero(node_factory: Any) -> None:
    node = node_factory(series={"quiet_seconds": 60}).start()
    files = ct_files()
    sender = AE(ae_title="STORESCU")  # a DICOM peer that can pause mid-association
    sender.add_requested_context(CTImageStorage)
    association = sender.associate("127.0.0.1", node.port, ae_title="AINODE")
    assert association.is_established
    try:
        statuses = [association.send_c_store(pydicom.dcmread(path)).Status
                    for path in files[:10]]
        assert node.proc is not None
        node.proc.terminate()  # SIGTERM while the association is open
        assert wait_for(lambda: not accepts_connections(node.port), 30, 0.05), (
            "still accepting associations after SIGTERM")
        assert node.proc.poll() is None  # waiting for the open association
        statuses += [association.send_c_store(pydicom.dcmread(path)).Status
                     for path in files[10:]]
    finally:
        association.release()
    assert statuses == [0x0000] * len(files)
    assert node.proc.wait(timeout=60) == 0, node.log()[-2000:]
    assert node.query("SELECT COUNT(*) FROM instances") == [(len(files),)]
