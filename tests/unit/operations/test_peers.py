"""The peers in effect: file peers overridden by live changes; a store that cannot be read
leaves the peers last read in effect (an association is answered, not left hanging)."""

from __future__ import annotations

from pathlib import Path

from node.operations.peers import PeerDirectory
from node.settings import Settings
from node.store.jobs import JobStore


def test_live_changes_override_the_file_and_an_unreadable_store_keeps_the_last(
        tmp_path: Path) -> None:
    settings = Settings.model_validate({"peers": [
        {"name": "PACS", "ae_title": "ORTHANC", "host": "10.0.0.1", "port": 104}]})
    store = JobStore(tmp_path / "jobs.sqlite3")
    writer = PeerDirectory(settings, store)
    readers_store = JobStore(tmp_path / "jobs.sqlite3")
    reader = PeerDirectory(settings, readers_store)  # another process
    writer.put({"name": "PACS", "ae_title": "ORTHANC", "host": "10.0.0.2", "port": 11112},
               "it")
    writer.put({"name": "CT", "ae_title": "CT1", "host": "10.0.0.3", "port": 104}, "it")
    assert [(p.name, p.host) for p in reader.settings().peers] == [
        ("PACS", "10.0.0.2"), ("CT", "10.0.0.3")]
    writer.remove("PACS", "it")
    assert [p.name for p in reader.settings().peers] == ["CT"]
    store.close()
    readers_store.close()  # the store is gone: the peers read last stay in effect
    assert [p.name for p in reader.settings().peers] == ["CT"]
