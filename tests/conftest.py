"""Fixtures only: a real `ainode serve` process, Triton, PostgreSQL and job stores on both
backends (the helpers they use are in tests/support/)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.environment import ROOT, STORESCU, free_port, require
from tests.support.node import NodeProcess, write_config
from tests.support.triton import TritonProcess, triton_available


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[NodeProcess] = []

    def make(**sections: Any) -> NodeProcess:
        port = free_port()
        data_dir = tmp_path / f"var{len(started)}"
        config_path = tmp_path / f"node{len(started)}.yaml"
        write_config(config_path, port, data_dir, **sections)
        node = NodeProcess(config_path, data_dir, port, tmp_path / f"node{len(started)}.log")
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


@pytest.fixture
def node(node_factory: Any) -> NodeProcess:
    require(STORESCU)
    return node_factory().start()  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def triton_grpc_url() -> str:
    """The tritonserver `make test` started (make triton-up), serving model_repository/."""
    port = int(os.environ.get("TRITON_GRPC_PORT", "8001"))
    if not triton_available(port):
        if os.environ.get("CI"):
            pytest.fail(f"no tritonserver on port {port}: make test starts one (make triton-up)")
        pytest.skip(f"no tritonserver on port {port}; run `make triton-up`")
    return f"127.0.0.1:{port}"


@pytest.fixture
def private_triton(tmp_path: Path) -> Iterator[TritonProcess]:
    if not (ROOT / ".triton-venv").exists() and not os.environ.get("CI"):
        pytest.skip("no .triton-venv; run `make triton-up` once")
    server = TritonProcess(tmp_path / "triton", free_port(), free_port())
    try:
        yield server
    finally:
        server.crash()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster for the session (see tests/postgres.py)."""
    from tests.support.postgres import throwaway_cluster

    with throwaway_cluster(free_port()) as cluster:
        yield cluster


STORE_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=STORE_BACKENDS)
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Opens fresh, empty job stores on each backend (every store test runs on both)."""
    from node.store.database import PostgresDatabase
    from node.store.jobs import JobStore

    opened: list[JobStore] = []
    cluster = request.getfixturevalue("postgres") if request.param == "postgresql" else None

    def make() -> JobStore:
        if cluster is None:
            store = JobStore(tmp_path / f"jobs{len(opened)}.sqlite3")
        else:
            store = JobStore(PostgresDatabase(cluster.new_database()))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
