"""Issue 24 §1 against a real ``ainode serve``: a page on another origin, opened in headless
Chromium on this machine, cannot change the node (forms auto-submitted, fetch without CORS);
slow-loris connections are closed by the header-read timeout while the node answers others;
a 600 MB body to the public sign-in is answered 413 without the web role's memory growing."""

from __future__ import annotations

import contextlib
import http.server
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.web.server import HEADER_TIMEOUT_S
from tests.support.environment import free_port, require, wait_for, wait_port
from tests.support.node import NodeProcess, http_call, role_processes
from tests.support.ohif_page import CHROMIUM

pytestmark = pytest.mark.integration


@pytest.fixture
def web_node(node_factory: Any) -> NodeProcess:
    http_port = free_port()
    node: NodeProcess = node_factory(node={"http_port": http_port})
    node.start()
    wait_port(http_port, timeout=60, proc=node.proc)
    return node


ATTACK_PAGE = """<!doctype html><html><body>
<form id="add" method="post" action="http://127.0.0.1:{port}/ui/peers" target="f1">
<input name="name" value="PACS"><input name="ae_title" value="EVIL">
<input name="host" value="203.0.113.66"><input name="port" value="104"></form>
<form id="cancel" method="post" action="http://127.0.0.1:{port}/ui/jobs/1/cancel" target="f2">
</form>
<iframe name="f1"></iframe><iframe name="f2"></iframe>
<script>
document.getElementById('add').submit();
document.getElementById('cancel').submit();
fetch('http://127.0.0.1:{port}/api/peers', {{method: 'POST', mode: 'no-cors',
  headers: {{'Content-Type': 'text/plain'}},
  body: JSON.stringify({{name: 'EVIL2', ae_title: 'EVIL2', host: '203.0.113.67', port: 104}})}})
  .finally(() => {{ document.title = 'sent'; }});
</script></body></html>"""


@pytest.fixture
def attacker(web_node: NodeProcess) -> Iterator[str]:
    """Another origin (its own port) serving a page that attacks the node."""
    page = ATTACK_PAGE.format(port=web_node.http_port).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _peer(node: NodeProcess, name: str) -> tuple[int, Any]:
    return http_call(node.http_port, f"/api/peers/{name}", timeout=30)


def test_a_page_on_another_origin_cannot_change_the_node(web_node: NodeProcess,
                                                          attacker: str) -> None:
    require(CHROMIUM)
    from playwright.sync_api import sync_playwright

    node = web_node
    web_node.proc  # noqa: B018 - started
    before = _peer(node, "PACS")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            answers: list[tuple[str, int]] = []
            page.on("response", lambda r: answers.append((r.url, r.status))
                    if "/ui/" in r.url or "/api/" in r.url else None)
            page.goto(attacker)
            assert wait_for(lambda: page.title() == "sent" and len(answers) >= 2, 30, 0.2), (
                answers)
        finally:
            browser.close()
    statuses = {url.split(str(node.http_port), 1)[1]: status for url, status in answers}
    assert statuses.get("/ui/peers") == 403 and statuses.get("/ui/jobs/1/cancel") == 403, (
        statuses)
    assert _peer(node, "PACS") == before  # not replaced
    assert _peer(node, "EVIL2")[0] == 404
    assert "cross-site POST /ui/peers refused (403)" in node.log()


def test_slow_loris_connections_are_closed_and_others_served(web_node: NodeProcess) -> None:
    port = web_node.http_port
    loris = []
    for _ in range(300):
        connection = socket.create_connection(("127.0.0.1", port))
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        loris.append(connection)
    started = time.monotonic()
    stop = threading.Event()

    def trickle() -> None:  # a header byte now and then: keeps a keep-alive timer from firing
        while not stop.is_set():
            for connection in loris:
                with contextlib.suppress(OSError):
                    connection.sendall(b"X")
            stop.wait(1.0)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        assert http_call(port, "/healthz", timeout=10) == (200, {"status": "ok"})

        def closed(connection: socket.socket) -> bool:
            connection.settimeout(0.01)
            try:
                return connection.recv(1) == b""
            except TimeoutError:
                return False
            except OSError:
                return True

        assert wait_for(lambda: all(closed(c) for c in loris), HEADER_TIMEOUT_S + 20, 0.5)
        elapsed = time.monotonic() - started
        assert elapsed < HEADER_TIMEOUT_S + 20
        print(f"slow loris: {len(loris)} connections closed {elapsed:.1f} s after they opened")
    finally:
        stop.set()
        thread.join()
        for connection in loris:
            connection.close()
    assert http_call(port, "/healthz", timeout=10) == (200, {"status": "ok"})


def _node_with_web_role(node_factory: Any, env: dict[str, str], **node_settings: Any
                        ) -> tuple[NodeProcess, int, int]:
    """A running node, its HTTP port and its web role's process id."""
    http_port = free_port()
    node: NodeProcess = node_factory(node={"http_port": http_port, **node_settings})
    node.env.update(env)
    node.start()
    wait_port(http_port, timeout=60, proc=node.proc)
    assert node.proc is not None
    return node, http_port, role_processes(node.proc.pid)["web"]


def _anonymous_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return sum(int(line.split()[1]) for line in status.splitlines()
               if line.startswith(("RssAnon:",)))


def test_a_huge_sign_in_body_is_refused_before_it_is_read(node_factory: Any) -> None:
    _, http_port, web = _node_with_web_role(node_factory, {"AINODE__NODE__HTTP_TOKEN":
                                                           "hostile-http-token-0123"})
    before = _anonymous_kb(web)
    size = 600 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", http_port)) as connection:
        connection.sendall(b"POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: application/x-www-form-urlencoded\r\n"
                           b"Content-Length: " + str(size).encode() + b"\r\n\r\ntoken=")
        sent = 0
        chunk = b"A" * (1024 * 1024)
        connection.settimeout(30)
        answer = b""
        try:
            while sent < size:  # the node answers and closes long before 600 MB
                connection.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        try:
            while b"\r\n\r\n" not in answer:
                data = connection.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"set-cookie" not in answer.lower()
    assert sent < size // 2, f"the node read {sent} bytes"
    assert (_anonymous_kb(web) - before) < 50 * 1024


def _huge_instance_head(size: int) -> tuple[bytes, str]:
    """A Part 10 CT instance whose Pixel Data (OW) is ``size`` bytes; the header bytes and
    its SOP Instance UID (the pixel bytes are streamed, never held)."""
    import io

    import pydicom
    from pydicom.uid import generate_uid

    from tests.support.environment import ct_files

    dataset = pydicom.dcmread(ct_files()[0], stop_before_pixels=True)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, size)
    return buffer.getvalue() + element, str(dataset.SOPInstanceUID)


def test_a_1_gb_stow_part_keeps_memory_flat_and_is_answered_at_once(node_factory: Any
                                                                     ) -> None:
    """Issue 24 §5: one 1 GB part; the web role's anonymous memory grows by at most 100 MB
    while it arrives, the part is written once and the answer comes within seconds of the
    body's end."""
    import json

    node, http_port, web = _node_with_web_role(node_factory, {}, min_free_disk_mb=1)
    before = _anonymous_kb(web)
    size = 1024 * 1024 * 1024
    head, sop_uid = _huge_instance_head(size)
    boundary = b"one-gigabyte"
    opening = (b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + head)
    closing = b"\r\n--" + boundary + b"--\r\n"
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                peak[0] = max(peak[0], _anonymous_kb(web))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with socket.create_connection(("127.0.0.1", http_port)) as connection:
            connection.sendall(
                b"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: multipart/related; type=\"application/dicom\"; boundary="
                + boundary + b"\r\nContent-Length: "
                + str(len(opening) + size + len(closing)).encode() + b"\r\n\r\n" + opening)
            zeros = bytes(4 * 1024 * 1024)
            for _ in range(size // len(zeros)):
                connection.sendall(zeros)
            connection.sendall(closing)
            ended = time.monotonic()
            connection.settimeout(120)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                data = connection.recv(65536)
                if not data:
                    break
                answer += data
            answered_s = time.monotonic() - ended
    finally:
        stop.set()
        sampler.join()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["00081199"]["Value"][0]["00081155"]["Value"] == [sop_uid]
    growth_mb = (peak[0] - before) / 1024
    assert growth_mb <= 100, f"web role anonymous memory grew {growth_mb:.0f} MB"
    assert answered_s < 30, f"answered {answered_s:.1f} s after the body's end"
    (kept,) = [p for p in node.stored_files() if p.stat().st_size > size]
    assert kept.stat().st_size == len(head) + size
    print(f"STOW-RS 1 GB part: web role +{growth_mb:.1f} MB anonymous, "
          f"answered {answered_s:.2f} s after the body's end")
