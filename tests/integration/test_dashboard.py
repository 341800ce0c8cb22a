"""The dashboard in headless Chromium (Playwright, the system's chromium) against a real
``ainode serve``: sign in with the token, add a peer through the form and echo it (a real
dcmtk storescp), retry a failed job and see it run again to done, read the API in Swagger UI
served by the node itself. Screenshots go to
$VIEWER_ARTIFACTS (a temporary directory otherwise)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.environment import DCMTK_ENV, ROOT, free_port, require, wait_for, wait_port
from tests.support.node import NodeProcess, storescu
from tests.support.ohif_page import CHROMIUM
from tests.support.radiographs import radiograph

pytestmark = pytest.mark.integration
TOKEN = "dashboard-test-token-0123"
STORESCP = "/usr/bin/storescp"


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    named = os.environ.get("VIEWER_ARTIFACTS")
    path = Path(named) if named else tmp_path / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def archive() -> Iterator[int]:
    """dcmtk storescp as a peer to echo."""
    require(STORESCP)
    port = free_port()
    with subprocess.Popen([STORESCP, "-aet", "ARCHIVE", str(port)], env=DCMTK_ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as scp:
        wait_port(port, proc=scp)  # type: ignore[arg-type]
        try:
            yield port
        finally:
            scp.terminate()


def test_dashboard_adds_and_echoes_a_peer_and_retries_a_failed_job(
        node_factory: Any, tmp_path: Path, artifacts: Path, archive: int) -> None:
    require(CHROMIUM)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)  # conditions, waited for; generous on a busy machine

    repository = tmp_path / "models"  # cxr_mass_cls lacks its network at first: its job fails
    (repository / "cxr_mass_cls" / "1").mkdir(parents=True)
    shutil.copy(ROOT / "model_repository" / "cxr_mass_cls" / "config.pbtxt",
                repository / "cxr_mass_cls")
    http_port = free_port()
    node: NodeProcess = node_factory(
        node={"http_port": http_port},
        series={"quiet_seconds": 1, "sweep_interval_s": 0.2},
        inference={"model_repository": str(repository)},
        pipelines=[{"name": "cxr-mass", "match": {"modality": ["CR", "DX"]},
                    "model": "cxr_mass_cls", "outputs": ["sr"]}])
    node.env["AINODE__NODE__HTTP_TOKEN"] = TOKEN
    node.start()
    wait_port(http_port, timeout=60, proc=node.proc)
    assert storescu(node, radiograph(tmp_path, "mass", "DASH1")).returncode == 0
    assert wait_for(lambda: node.query("SELECT state FROM jobs") == [("failed",)], 120, 0.2), (
        node.query("SELECT * FROM jobs"), node.log()[-2000:])
    (job_id,), = node.query("SELECT id FROM jobs")
    base = f"http://127.0.0.1:{http_port}"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(f"{base}/ui")
            expect(page).to_have_url(f"{base}/ui/login")  # the token first
            page.fill("#token", TOKEN)
            page.click("button[type=submit]")
            expect(page.locator("h1")).to_have_text("Overview")
            expect(page.locator(".card", has_text="jobs failed").locator(".value")
                   ).to_have_text("1")
            page.screenshot(path=str(artifacts / "dashboard-overview.png"), full_page=True)

            # a peer through the form, then C-ECHO from its row
            page.click("text=Peers")
            page.fill("#name", "ARCHIVE")
            page.fill("#ae_title", "ARCHIVE")
            page.fill("#host", "127.0.0.1")
            page.fill("#port", str(archive))
            page.click("#save-peer")
            expect(page.locator(".flash")).to_contain_text(
                f"added ARCHIVE: ARCHIVE@127.0.0.1:{archive}")
            row = page.locator('tr[data-peer="ARCHIVE"]')
            expect(row).to_contain_text("live")
            row.locator("button[name=echo]").click()
            expect(page.locator(".flash")).to_contain_text(
                re.compile(r"C-ECHO ARCHIVE: 0x0000 in [\d.]+ ms"))
            page.screenshot(path=str(artifacts / "dashboard-peers.png"), full_page=True)

            # the failed job, with its reason; the model arrives; Retry runs it again
            page.click("text=Failures")
            failed = page.locator(f'#failed-jobs tr[data-job="{job_id}"]')
            expect(failed).to_contain_text("cxr_mass_cls")
            page.screenshot(path=str(artifacts / "dashboard-failures.png"), full_page=True)
            shutil.copytree(ROOT / "model_repository" / "cxr_mass_cls",
                            repository / "cxr_mass_cls", dirs_exist_ok=True)
            failed.locator("text=Retry").click()
            expect(page.locator(".flash")).to_contain_text(f"job {job_id} queued again")
            assert wait_for(lambda: node.query("SELECT state FROM jobs") == [("done",)],
                            180, 0.2), (node.query("SELECT * FROM jobs"), node.log()[-2000:])
            page.goto(f"{base}/ui/jobs")
            done = page.locator(f'#jobs tr[data-job="{job_id}"]')
            expect(done).to_have_attribute("data-state", "done")
            expect(done.locator("td").nth(8)).to_contain_text(" s")  # inference timed
            page.screenshot(path=str(artifacts / "dashboard-jobs.png"), full_page=True)

            # the API's description in Swagger UI, with the sign-in's cookie and nothing
            # from outside this node (a hospital network has no CDN)
            outside: list[str] = []
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
                base) else (outside.append(route.request.url), route.abort()))
            page.goto(f"{base}/docs")
            expect(page.locator('.opblock-summary-path[data-path="/api/series"]')
                   ).to_be_visible()
            assert not outside, outside
        finally:
            browser.close()
    assert node.query("SELECT attempts FROM jobs") == [(1,)]  # fresh attempts after retry
    actions = {action for (action,) in node.query("SELECT action FROM audit")}
    assert {"peer added", "requeue jobs"} <= actions
