"""Issue 24 §4: after a PACS outage, the results waiting for it go promptly once it answers
again, whatever their backoff reached (the delivery module with a fake PACS, a real SQLite
outbox and an injected clock; the real node and Orthanc: tests/integration/
test_delivery_faults.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from node.cli import app
from node.domain import Outcome, SeriesKey
from node.egress.delivery import Delivery
from node.egress.targets import Target
from node.settings import Settings
from node.store.jobs import JobStore
from node.store.outbox import Outbox, OutboxItem, ResultToSend
from node.store.queue import JobQueue


@dataclass
class _FakePacs:
    """The destination PACS (an egress target): down until ``up``; counts what was tried."""

    up: bool = False
    tried: int = 0
    name: str = "PACS"
    where: str = "ORTHANC@127.0.0.1:4242"
    address: str = "127.0.0.1"
    identity: str = "ORTHANC"

    def send(self, items: list[OutboxItem]) -> dict[str, Outcome]:
        self.tried += len(items)
        if not self.up:
            return {i.path: Outcome.retry("unavailable: connection refused") for i in items}
        return {i.path: Outcome.sent() for i in items}

    def find(self, _settings: Settings, destination: str) -> Target | None:
        return self if destination == self.name else None


def _settings(tmp_path: Path) -> Settings:
    return Settings.model_validate({
        "node": {"data_dir": str(tmp_path / "var")},
        "peers": [{"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}],
        "egress": {"retry_s": 5, "max_retry_s": 600, "probe_s": 15},
    })


def _queued(tmp_path: Path, count: int) -> tuple[JobStore, Outbox]:
    (tmp_path / "var").mkdir(exist_ok=True)
    store = JobStore(tmp_path / "var" / "jobs.sqlite3")
    queue = JobQueue(store)
    queue.enqueue(SeriesKey("1.2.3", 1), [("ct", "ct_body_seg")], now=0)
    job = queue.jobs(1)[0]
    outbox = Outbox(store)
    for n in range(count):
        outbox.put(job.id, ResultToSend("PACS", f"/r/{n}.dcm", f"9.{n}", "seg", 0), now=0)
    return store, outbox


def test_results_go_within_30_s_of_an_11_minute_outage_ending(tmp_path: Path) -> None:
    store, outbox = _queued(tmp_path, 3)
    now = [0.0]
    pacs = _FakePacs()
    delivery = Delivery(_settings(tmp_path), outbox, clock=lambda: now[0], targets=[pacs.find])
    try:
        while now[0] < 660:  # the outage: one pass a second, as the sender's loop
            assert delivery.deliver_ready() == 0
            now[0] += 1
        tried_in_outage = pacs.tried
        pacs.up = True
        back = now[0]
        sent = 0
        while sent < 3 and now[0] - back < 700:
            sent += delivery.deliver_ready()
            now[0] += 1
        assert sent == 3
        assert now[0] - back <= 30, f"results arrived {now[0] - back:.0f} s after the outage"
        assert tried_in_outage <= 3 * 12 + 660 // 15 + 3, tried_in_outage  # no hammering
    finally:
        store.close()


def test_one_result_sent_releases_the_rest_for_that_destination(tmp_path: Path) -> None:
    store, outbox = _queued(tmp_path, 5)
    now = [0.0]
    pacs = _FakePacs()
    delivery = Delivery(_settings(tmp_path), outbox, clock=lambda: now[0], targets=[pacs.find])
    try:
        for _ in range(8):  # backoffs of 5, 10, ... 600 s
            delivery.deliver_ready()
            now[0] += 700
        delivery.deliver_ready()  # all five wait 600 s now
        now[0] += 1
        assert delivery.deliver_ready() == 0
        outbox.retry_now([1], now[0])  # an operator's "retry now" for one
        pacs.up = True
        assert delivery.deliver_ready() == 1  # that one; the other four released
        assert delivery.deliver_ready() == 4
    finally:
        store.close()


def test_requeue_results_for_a_destination_from_the_cli(tmp_path: Path) -> None:
    store, outbox = _queued(tmp_path, 3)
    now = time.time()
    outbox.ready(now)
    outbox.retry(1, "unavailable", 600, now)
    outbox.retry(2, "unavailable", 600, now)
    outbox.dead(3, "gave up", now)
    store.close()
    config = tmp_path / "node.yaml"
    config.write_text(f"node: {{data_dir: {tmp_path / 'var'}}}\n"
                      "peers: [{name: PACS, ae_title: ORTHANC, host: 127.0.0.1, port: 4242}]\n")
    result: Any = CliRunner().invoke(app, ["requeue", "results", "--destination", "PACS",
                                           "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "1 dead letter(s) queued again, 2 waiting result(s) sent now" in result.output
    store = JobStore(tmp_path / "var" / "jobs.sqlite3")
    try:
        assert len(Outbox(store).ready(time.time())["PACS"]) == 3
        assert any(line.action == "requeue results" for line in store.audit_lines())
    finally:
        store.close()
    again = CliRunner().invoke(app, ["requeue", "results", "--destination", "PACS",
                                     "--config", str(config)])
    assert again.exit_code == 1 and "nothing waits for PACS" in again.output
