"""Loopback ports for the benchmarks' servers (imported by the bench scripts, run as files,
and by the tests as ``bench.ports``)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def listening_sockets(port: int) -> int:
    """How many sockets listen on ``port`` (several receiver processes with SO_REUSEPORT),
    from the kernel's tables (``/proc/net/tcp``, ``tcp6``; state 0A is LISTEN)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


@contextmanager
def serving(command: list[str], ports: list[int], env: Mapping[str, str],
            log: IO[bytes] | int | None = subprocess.DEVNULL, timeout_s: float = 60,
            stop_timeout_s: float = 120) -> Iterator[subprocess.Popen[bytes]]:
    """A server process (ainode serve, Orthanc) started, listening on each of ``ports``, and
    terminated on leaving. ``log``: where its output goes (``None``: this process's)."""
    proc = subprocess.Popen(command, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    try:
        for port in ports:
            wait_port(port, timeout_s)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=stop_timeout_s)
