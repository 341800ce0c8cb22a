"""Delivery under faults: a DICOMweb peer that refuses our credentials, a PACS that is down
for hours, association rejections that say "later" or "never", and an operator's requeue."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from node.dicom.scu import PeerRefused, PeerUnavailable, echo
from node.egress.delivery import Delivery
from node.egress.targets import status_outcome
from node.settings import Peer, load_settings
from node.store.jobs import JobStore
from node.store.outbox import Outbox, ResultToSend
from tests.support.environment import ROOT, ct_files, free_port, wait_for
from tests.support.node import ct_body_pipeline, storescu
from tests.support.orthanc import start_orthanc

pytestmark = pytest.mark.integration


def test_outcomes_that_are_not_dimse_statuses_never_raise() -> None:
    assert status_outcome("0xC000").verdict == "dead"
    assert status_outcome("not sent: association lost").verdict == "retry"
    assert status_outcome("0xA700").verdict == "retry"
    assert status_outcome("0xB007").verdict == "sent"
    assert status_outcome("0xnonsense").verdict == "retry"
    assert status_outcome("not sent: no presentation context for it").verdict == "dead"


def test_a_dicomweb_peer_refusing_our_credentials_does_not_stop_the_others(
    tmp_path: Path, node_factory: Any
) -> None:
    """Orthanc answers 401 to STOW-RS (wrong password): the same results still reach the PACS
    over DIMSE, and the DICOMweb items wait with backoff (no re-POST every second, which
    would lock the account), with the reason visible."""
    http_port, dicom_port = free_port(), free_port()
    web = {"name": "WEB", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom_port,
           "dicomweb_url": f"http://127.0.0.1:{http_port}/dicom-web",
           "username": "ainode", "password": "wrong"}
    pacs_peer = {"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom_port}
    node = node_factory(
        peers=[web, pacs_peer, {"name": "MODALITY", "ae_title": "STORESCU",
                                "host": "127.0.0.1", "port": 11113}],
        series={"quiet_seconds": 1},
        inference={"model_repository": str(ROOT / "model_repository")},
        egress={"retry_s": 2, "max_retry_s": 30, "interval_s": 0.2},
        pipelines=[{**ct_body_pipeline("WEB"), "destinations": ["WEB", "PACS"]}],
    ).start()
    with start_orthanc(tmp_path, http_port, dicom_port, node.port,
                       users={"ainode": "s3cret"}) as pacs:
        assert storescu(node, *ct_files()).returncode == 0
        assert wait_for(lambda: node.query(
            "SELECT COUNT(*) FROM outbox WHERE destination='PACS' AND state='sent'") == [(3,)],
            120, 0.5), (node.query("SELECT * FROM outbox"), node.log()[-3000:])
        assert pacs.api("/statistics")["CountInstances"] == 3
        # the loop looks at the outbox every 0.2 s; the refused items wait 2 s, 4 s, 8 s ...
        assert wait_for(lambda: all(r[0] >= 2 for r in node.query(
            "SELECT attempts FROM outbox WHERE destination='WEB'")), 60, 0.2), (
            node.query("SELECT * FROM outbox"))
        web_rows = node.query("SELECT state, attempts, error, not_before - updated_at"
                              " FROM outbox WHERE destination='WEB'")
        context = (web_rows, node.query("SELECT id, revision, state, error FROM jobs"),
                   node.log()[-3000:])
        assert len(web_rows) == 3 and all(r[0] == "queued" for r in web_rows), context
        assert all("HTTP 401" in r[2] for r in web_rows), context
        for _, attempts, _, wait_s in web_rows:
            assert wait_s == pytest.approx(min(30, 2 * 2 ** (attempts - 1))), context
        assert node.alive and "ValueError" not in node.log()


def _settings(tmp_path: Path, peer: dict[str, Any], **egress: Any) -> Any:
    config = tmp_path / "node.yaml"
    config.write_text(json.dumps({"node": {"data_dir": str(tmp_path / "var")},
                                  "peers": [peer], "egress": egress}))
    return load_settings(config, environ={})


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _queued_result(tmp_path: Path, store: JobStore, destination: str) -> None:
    Outbox(store).put(1, ResultToSend(destination, str(ct_files()[0]), "1.2.3", "seg", 0), 0)


# pynetdicom 3.0 leaves the socket of a refused connection to the garbage collector
@pytest.mark.filterwarnings("ignore::ResourceWarning",
                            "ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_pacs_down_for_hours_is_retried_for_a_day_then_dead_lettered(tmp_path: Path) -> None:
    """Nothing listens on the PACS port (real refused connections). With the defaults the
    result is still queued after 11 minutes and after 12 hours of outage, backing off to at
    most egress.max_retry_s, and only dead after egress.retry_window_s (24 h)."""
    port = free_port()
    settings = _settings(tmp_path, {"name": "PACS", "ae_title": "PACS", "host": "127.0.0.1",
                                    "port": port})
    store = JobStore(tmp_path / "jobs.sqlite3")
    outbox, clock = Outbox(store), Clock()
    _queued_result(tmp_path, store, "PACS")
    delivery = Delivery(settings, outbox, clock)
    started = clock.now
    passes = 0
    while clock.now - started < 12 * 3600:
        delivery.deliver_ready()
        passes += 1
        ((_, _, _, _, state, _, error),) = outbox.items()
        assert state == "queued", error
        ((not_before,),) = store.query("SELECT not_before FROM outbox")
        assert not_before - clock.now <= settings.egress.max_retry_s
        clock.now = not_before
    assert passes > 20
    clock.now = started + 24 * 3600 + 1
    delivery.deliver_ready()
    ((_, _, _, _, state, _, error),) = outbox.items()
    assert state == "dead" and error.startswith("gave up after 86400 s: unavailable")


def _scp(max_associations: int, callers: list[str] | None = None) -> tuple[Any, int]:
    ae = AE(ae_title="PACS")
    ae.add_supported_context(Verification)
    ae.maximum_associations = max_associations
    if callers is not None:
        ae.require_calling_aet = callers
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_ECHO, lambda event: 0x0000)])
    return server, port


def test_association_rejections_are_told_apart_by_result_source_and_reason() -> None:
    """A peer at its association limit answers rejected-transient / local limit exceeded:
    try later. A peer that does not know our AE title answers rejected-permanent: dead."""
    busy, busy_port = _scp(max_associations=1)
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(Verification)
    held = holder.associate("127.0.0.1", busy_port, ae_title="PACS")
    try:
        assert held.is_established
        peer = Peer(name="BUSY", ae_title="PACS", host="127.0.0.1", port=busy_port)
        with pytest.raises(PeerUnavailable) as later:
            echo(peer, "AINODE")
        assert not isinstance(later.value, PeerRefused)
        assert "Local limit exceeded" in str(later.value)
    finally:
        held.release()
        busy.shutdown()
    strict, strict_port = _scp(max_associations=4, callers=["SOMEONE"])
    try:
        peer = Peer(name="STRICT", ae_title="PACS", host="127.0.0.1", port=strict_port)
        with pytest.raises(PeerRefused) as never:
            echo(peer, "AINODE")
        assert "Calling AE title not recognised" in str(never.value)
    finally:
        strict.shutdown()


def test_requeue_brings_dead_letters_back_and_is_audited(tmp_path: Path) -> None:
    strict, port = _scp(max_associations=4, callers=["SOMEONE"])
    try:
        settings = _settings(tmp_path, {"name": "PACS", "ae_title": "PACS",
                                        "host": "127.0.0.1", "port": port})
        store = JobStore(tmp_path / "var" / "jobs.sqlite3")
        outbox = Outbox(store)
        _queued_result(tmp_path, store, "PACS")
        Delivery(settings, outbox, Clock()).deliver_ready()
        ((item_id, _, _, _, state, _, error),) = outbox.items()
        assert state == "dead" and "Calling AE title not recognised" in error
        store.close()
    finally:
        strict.shutdown()
    ainode = str(Path(sys.executable).parent / "ainode")
    config = str(tmp_path / "node.yaml")
    unknown = subprocess.run([ainode, "requeue", "results", "999", "--config", config],
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 1 and "999" in unknown.stderr
    done = subprocess.run([ainode, "requeue", "results", "--all", "--config", config],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"requeued 1 results: {item_id}" in done.stdout
    store = JobStore(tmp_path / "var" / "jobs.sqlite3")
    ((_, _, _, _, state, attempts, _),) = Outbox(store).items()
    assert (state, attempts) == ("queued", 0)
    (line,) = store.audit_lines()
    assert (line.action, line.detail) == ("requeue results", str(item_id)) and line.actor


class _FlakyStow:
    """A STOW-RS front for a real Orthanc that answers the given HTTP statuses first (a load
    balancer during an outage, a gateway that refuses), then passes requests through."""

    def __init__(self, orthanc_dicomweb: str, statuses: list[int]) -> None:
        import http.server
        import threading
        import urllib.request

        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                front.requests += 1
                if front.statuses:
                    self.send_error(front.statuses.pop(0))
                    return
                request = urllib.request.Request(orthanc_dicomweb + self.path, data=body,
                                                 method="POST")
                request.add_header("Content-Type", self.headers["Content-Type"])
                request.add_header("Accept", self.headers.get("Accept", "*/*"))
                with urllib.request.urlopen(request, timeout=60) as answer:
                    payload = answer.read()
                    self.send_response(answer.status)
                    self.send_header("Content-Type", answer.headers["Content-Type"])
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.statuses = statuses
        self.requests = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_stow_rs_5xx_is_retried_until_it_succeeds_and_4xx_is_refused_at_once(
        tmp_path: Path) -> None:
    """Through a front that answers 503, 502 then passes on to a real Orthanc: the result is
    retried with backoff (dicomweb-client also retries within a pass) and stored once; a 400
    from the front makes a dead letter at once."""
    http_port, dicom_port = free_port(), free_port()
    with start_orthanc(tmp_path, http_port, dicom_port, free_port()) as pacs:
        front = _FlakyStow(pacs.dicomweb, [503, 502])
        try:
            settings = _settings(tmp_path, {"name": "WEB", "ae_title": "WEB",
                                            "host": "127.0.0.1", "port": 1,
                                            "dicomweb_url": front.url})
            store = JobStore(tmp_path / "jobs.sqlite3")
            outbox, clock = Outbox(store), Clock()
            _queued_result(tmp_path, store, "WEB")
            delivery = Delivery(settings, outbox, clock)
            retries = 0
            while delivery.deliver_ready() == 0:  # dicomweb-client may retry within a pass
                ((_, _, _, _, state, _, error),) = outbox.items()
                assert state == "queued" and error in ("unavailable: HTTP 503",
                                                       "unavailable: HTTP 502"), error
                ((not_before,),) = store.query("SELECT not_before FROM outbox")
                assert not_before > clock.now  # a backoff, not a spin
                clock.now = not_before
                retries += 1
                assert retries < 5
            ((_, _, _, _, state, _, _),) = outbox.items()
            assert retries >= 1 and state == "sent"
            assert front.requests == 3 and front.statuses == []
            assert len(pacs.api("/instances")) == 1

            front.statuses = [400]
            Outbox(store).put(2, ResultToSend("WEB", str(ct_files()[1]), "1.2.4", "sr", 0),
                              clock.now)
            assert delivery.deliver_ready() == 0
            states = {uid: (state, error) for _, _, _, uid, state, _, error in outbox.items()}
            assert states["1.2.4"] == ("dead", "refused: HTTP 400")
            assert len(pacs.api("/instances")) == 1
        finally:
            front.close()


@pytest.mark.filterwarnings("ignore::ResourceWarning",
                            "ignore::pytest.PytestUnraisableExceptionWarning")
def test_after_an_11_minute_orthanc_outage_results_arrive_within_30_s(tmp_path: Path) -> None:
    """Issue 24 §4 with a real PACS: Orthanc is down (nothing listens) for 11 minutes of the
    sender's clock, its results back off to egress.max_retry_s (600 s); once Orthanc
    listens again they are in Orthanc within 30 s of the clock (one probe per egress.probe_s,
    then the rest at once), not when their backoff ends."""
    http_port, dicom_port = free_port(), free_port()
    settings = _settings(tmp_path, {"name": "PACS", "ae_title": "ORTHANC",
                                    "host": "127.0.0.1", "port": dicom_port})
    store = JobStore(tmp_path / "jobs.sqlite3")
    outbox, clock = Outbox(store), Clock()
    files = ct_files()[:3]
    for n, path in enumerate(files):
        outbox.put(1, ResultToSend("PACS", str(path), f"1.2.3.{n}", "seg", 0), 0)
    delivery = Delivery(settings, outbox, clock)
    started = clock.now
    try:
        while clock.now - started < 660:  # the sender's loop, every 5 s of its clock
            assert delivery.deliver_ready() == 0
            clock.now += 5
        waits = [not_before - clock.now for (not_before,) in
                 store.query("SELECT not_before FROM outbox")]
        assert max(waits) > 300, waits  # the backoff alone would keep them out for minutes
        with start_orthanc(tmp_path, http_port, dicom_port, free_port()) as orthanc:
            back = clock.now
            sent = 0
            while sent < len(files) and clock.now - back <= 600:
                sent += delivery.deliver_ready()
                clock.now += 1
            assert sent == len(files)
            assert clock.now - back <= 30, f"{clock.now - back:.0f} s after Orthanc was back"
            print(f"after an 11-minute outage (longest wait then {max(waits):.0f} s): all in "
                  f"Orthanc {clock.now - back:.0f} s after it listened again")
            assert len(orthanc.api("/instances")) == len(files)
    finally:
        store.close()
