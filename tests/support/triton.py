"""A real tritonserver: the shared one (scripts/triton.sh) and private ones a test may kill."""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.environment import ROOT, free_port

TRITON_SCRIPT = ROOT / "scripts" / "triton.sh"


def triton_available(grpc_port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", grpc_port)) == 0


@dataclass
class TritonProcess:
    """A private tritonserver (own ports and run dir), to stop and crash in a test."""

    run_dir: Path
    http_port: int
    grpc_port: int
    repository: Path = ROOT / "model_repository"
    extra_args: str = ""  # e.g. "--model-control-mode=explicit --load-model=*"

    def _script(self, command: str) -> None:
        env = {**os.environ, "TRITON_RUN_DIR": str(self.run_dir),
               "TRITON_EXTRA_ARGS": self.extra_args,
               "TRITON_MODEL_REPOSITORY": str(self.repository),
               "TRITON_HTTP_PORT": str(self.http_port), "TRITON_GRPC_PORT": str(self.grpc_port),
               "TRITON_METRICS_PORT": str(free_port())}
        subprocess.run(["bash", str(TRITON_SCRIPT), command], env=env, check=True,
                       capture_output=True, timeout=180)

    def up(self) -> None:
        self._script("up")

    def down(self) -> None:
        self._script("down")

    def crash(self) -> None:
        self._script("kill")

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int:
        return int((self.run_dir / "pid").read_text())
