"""The supervisor starts and watches the role processes and loads none of their code: no
pynetdicom, highdicom, torch or MONAI in its memory (issue 25). Read from the running
supervisor itself (``kill -USR1`` makes it log its loaded packages)."""

from __future__ import annotations

import os
import re
import signal
from typing import Any

import pytest

from tests.support.environment import wait_for

pytestmark = pytest.mark.integration

# (tritonclient is there: its protobuf classes read the models' config.pbtxt for the check
# that every label has codes; no client, no gRPC channel)
HEAVY = {"pynetdicom", "highdicom", "torch", "monai", "onnxruntime"}


def test_the_supervisor_loads_no_dicom_network_or_model_code(node_factory: Any) -> None:
    node = node_factory().start()
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGUSR1)
    line = wait_for(lambda: re.search(r"packages loaded: (.*)", node.log()), 30)
    assert line, node.log()[-2000:]
    loaded = set(line.group(1).split())
    assert {"node", "pydantic"} <= loaded  # it did report
    assert loaded & HEAVY == set()
    # its children do load them: the receiver answers C-STORE with pynetdicom
    assert wait_for(lambda: "listening as" in node.log(), 60)
