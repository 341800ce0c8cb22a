"""A throwaway PostgreSQL cluster for the tests: Debian's server binaries, ``initdb`` in a
temporary directory, ``pg_ctl`` on a free loopback port. No system service; as root (CI) the
server runs as the ``postgres`` user, as PostgreSQL requires."""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

USER = "ainode"


def server_bin() -> Path | None:
    """The newest installed server's binaries (``/usr/lib/postgresql/<major>/bin``)."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name)
    )
    return versions[-1].parent if versions else None


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@dataclass
class PostgresCluster:
    bin_dir: Path
    root: Path
    port: int
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def _run(self, *command: str) -> None:
        subprocess.run(_as_server_user(list(command)), check=True, capture_output=True,
                       timeout=120)

    def init(self) -> None:
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", USER,
                  "--auth=trust", "--no-sync", "-E", "UTF8")
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\nmax_connections = 200\n"
                # fsync off: the tests crash the server process, never the machine (with
                # synchronous_commit off, even a process crash could lose commits)
                "fsync = off\nfull_page_writes = off\n"
            )

    def start(self) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60",
                  "-l", str(self.root / "server.log"), "start")

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w", "-m", mode,
                      "stop")

    def restart(self) -> None:
        """Stop immediately (connections dropped, as a crash would) and start again."""
        self.stop("immediate")
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:unused@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@contextlib.contextmanager
def throwaway_cluster(port: int) -> Iterator[PostgresCluster]:
    bin_dir = server_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (make test installs it)")
        pytest.skip("PostgreSQL server binaries are not installed; run `make system-deps`")
    root = Path(tempfile.mkdtemp(prefix="ainode-pg-"))
    cluster = PostgresCluster(bin_dir, root, port)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
