"""A web app on a real SQLite job store and spool (no network): FastAPI's TestClient."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from node.ingest.intake import Intake
from node.ingest.stow import StowReceiver
from node.operations.peers import PeerDirectory
from node.settings import Settings
from node.store.jobs import JobStore
from node.store.series import CompletionPolicy, SeriesAssembler
from node.store.spool import Spool
from node.web.app import create_app
from node.web.context import WebContext

TOKEN = "s3cret-token-for-tests"


def settings_for(tmp_path: Path, research: list[dict[str, Any]] | None = None,
                 **node: Any) -> Settings:
    return Settings.model_validate(config_for(tmp_path, research, **node))


def config_for(tmp_path: Path, research: list[dict[str, Any]] | None = None,
               **node: Any) -> dict[str, Any]:
    """The configuration (as the YAML file has it) of the web app under test."""
    return {
        "research": research or [],
        "node": {"data_dir": str(tmp_path / "var"), "min_free_disk_mb": 1, **node},
        "peers": [{"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242},
                  {"name": "CT", "ae_title": "CTSCAN", "host": "127.0.0.1", "port": 104}],
        "pipelines": [{"name": "ct", "match": {"modality": "CT"}, "model": "ct_body_seg",
                       "destinations": ["PACS"]}],
    }


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., tuple[TestClient, WebContext]]]:
    stores: list[JobStore] = []

    def make(research: list[dict[str, Any]] | None = None, **node: Any
             ) -> tuple[TestClient, WebContext]:
        settings = settings_for(tmp_path, research, **node)
        settings.node.data_dir.mkdir(parents=True, exist_ok=True)
        store = JobStore(settings.node.data_dir / "jobs.sqlite3")
        stores.append(store)
        spool = Spool(settings.node.data_dir / "spool")
        assembler = SeriesAssembler(store, CompletionPolicy(quiet_seconds=5), clock=lambda: 0.0)
        intake = Intake(spool, store.record_instance, assembler.instance_recorded,
                        clock=lambda: 0.0, min_free_mb=settings.node.min_free_disk_mb,
                        transport="stow")
        stow = StowReceiver(intake, "AINODE", 100)
        context = WebContext(settings, store, PeerDirectory(settings, store), stow,
                             intake=intake)
        # loopback, as a browser on this machine names the node (the Host check refuses others)
        return TestClient(create_app(context), base_url="http://127.0.0.1"), context

    yield make
    for store in stores:
        store.close()


def csrf_of(client: TestClient, page: str = "/ui/peers") -> str:
    """The CSRF token the dashboard's forms carry for this client's session."""
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(page).text)
    assert found, "no CSRF token in the page's forms"
    return found.group(1)
