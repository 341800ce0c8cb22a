"""Where the test data and the real tools are, free ports, and waiting on conditions (never on
fixed sleeps)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]  # the repository


DATA = ROOT.parent / "shared" / "data"


CT_DIR = DATA / "ct-abdomen"


STORESCU = "/usr/bin/storescu"


ECHOSCU = "/usr/bin/echoscu"


DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def require(tool: str) -> str:
    """A real peer the test needs; CI installs them all, so a missing one is a failure there."""
    if not Path(tool).exists() and shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed (make test installs it)")
        pytest.skip(f"{tool} is not installed; run `make test`")
    return tool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


def wait_for(predicate: Any, timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def ct_files() -> list[Path]:
    files = sorted(CT_DIR.glob("*.dcm"))
    assert len(files) == 134, "the shared CT has 134 slices"
    return files
