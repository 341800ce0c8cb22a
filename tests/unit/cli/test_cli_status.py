from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from node.cli import app
from node.domain import CompletionReason, InstanceRef, SeriesKey
from node.store.jobs import JobStore
from node.store.outbox import Outbox, ResultToSend
from node.store.queue import JobQueue


def _ref(sop: str) -> InstanceRef:
    return InstanceRef(sop, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2", "1.2.840.10008.1.2.1",
                       "CT", f"/spool/{sop}.dcm", 10, "MOD", "AINODE")


def test_status_shows_superseded_jobs_and_undelivered_results_by_id(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    store = JobStore(data_dir / "jobs.sqlite3")
    queue, outbox = JobQueue(store), Outbox(store)
    store.record_instance(_ref("1"), now=0)
    store.complete_series(SeriesKey("1.2.3", 1), CompletionReason.QUIET, now=1)
    queue.enqueue(SeriesKey("1.2.3", 1), [("ct-body", "m")], now=1)
    job = queue.claim(now=2, lease_s=60)
    assert job is not None
    queue.complete(job, {"labels": {}}, now=3)
    outbox.put(job.id, ResultToSend("PACS", "/r/seg.dcm", "9.9", "seg", 0), now=3)
    (item_id, *_), = outbox.items()
    outbox.dead(item_id, "refused: no presentation context", now=4)
    store.record_instance(_ref("1"), now=5)  # re-sent: revision 2 supersedes revision 1
    store.close()
    config = tmp_path / "node.yaml"
    config.write_text(f"node: {{data_dir: {data_dir}}}\n")
    result = CliRunner().invoke(app, ["status", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "superseded by revision 2" in result.output
    assert f"result {item_id}: PACS seg 9.9: dead after 1 attempt(s): refused" in result.output
    assert "superseded 0" in result.output  # the per-destination counts name every state
    overview = result.output.split("overview", 1)[1].split("\n")
    cells = [c.strip() for c in next(line for line in overview if "embedded" in line).split("│")]
    # received in the last hour / day (the test's instances are from 1970), queue, failed,
    # dead letters, disk, backend
    assert cells[1:6] == ["0", "0", "0", "0", "1"] and cells[7] == "embedded", cells


def test_audit_prints_the_lines_since_a_time_newest_first(tmp_path: Path) -> None:
    import datetime as dt
    import time

    data_dir = tmp_path / "var"
    store = JobStore(data_dir / "jobs.sqlite3")
    now = time.time()
    store.audit("OLDCALLER", "association rejected", "from 10.0.0.9: not in peers", now - 3 * 86400)
    store.audit("STORESCU", "association released", "from 127.0.0.1: 3 stored", now - 7200)
    store.audit("node", "job done", "job 1: ct-body on ct_body_seg 1.0.0", now - 60)
    store.close()
    config = tmp_path / "node.yaml"
    config.write_text(f"node: {{data_dir: {data_dir}}}\n")
    runner = CliRunner()
    wide = {"COLUMNS": "200"}
    recent = runner.invoke(app, ["audit", "--config", str(config), "--since", "3h"], env=wide)
    assert recent.exit_code == 0, recent.output
    assert "job done" in recent.output and "association released" in recent.output
    assert "OLDCALLER" not in recent.output
    assert recent.output.index("job done") < recent.output.index("association released")
    day = dt.datetime.fromtimestamp(now - 4 * 86400).date().isoformat()
    everything = runner.invoke(app, ["audit", "--config", str(config), "--since", day], env=wide)
    assert "OLDCALLER" in everything.output and "not in peers" in everything.output
    bad = runner.invoke(app, ["audit", "--config", str(config), "--since", "yesterday"])
    assert bad.exit_code == 2 and "give 30m, 24h, 7d" in bad.output
