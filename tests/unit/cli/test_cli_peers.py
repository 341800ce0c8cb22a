"""`ainode peers`: the same live peer changes as the admin API, from the shell."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from node.cli import app
from node.operations.peers import PeerDirectory
from node.settings import load_settings
from node.store.jobs import JobStore


def test_peers_add_list_remove_reset(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    config = tmp_path / "node.yaml"
    config.write_text(
        f"node: {{data_dir: {data_dir}}}\n"
        "peers: [{name: PACS, ae_title: ORTHANC, host: 127.0.0.1, port: 4242}]\n"
        "pipelines: [{name: ct, model: m, destinations: [PACS]}]\n")
    runner = CliRunner()

    def run(*arguments: str) -> tuple[int, str]:
        result = runner.invoke(app, ["peers", *arguments, "--config", str(config)])
        words = result.output.replace("│", " ").split()
        return result.exit_code, " ".join(words)

    assert run("add", "CT2", "--ae-title", "CT2", "--host", "10.1.2.3", "--port", "104",
               "--from", "10.1.2.0/24", "--results", "seg,sr") == (
        0, "added CT2: CT2@10.1.2.3:104")
    code, output = run("list")
    assert code == 0 and "CT2 CT2 10.1.2.3 104" in output and "seg,sr" in output
    assert "PACS ORTHANC" in output and " file " in output and " live " in output
    code, output = run("add", "BAD", "--ae-title", "X" * 17, "--host", "h", "--port", "1")
    assert code == 2 and "peers.BAD.ae_title" in output
    code, output = run("remove", "PACS")
    assert code == 2 and "pipelines ct send results to it" in output
    assert run("remove", "CT2") == (0, "removed CT2")
    assert run("remove", "CT2")[0] == 1
    assert run("reset", "CT2") == (0, "CT2: back to the configuration file")

    store = JobStore(data_dir / "jobs.sqlite3")
    try:
        directory = PeerDirectory(load_settings(config, environ={}), store)
        assert [p.name for p in directory.settings().peers] == ["PACS"]
        actions = [line.action for line in store.audit_lines()]
        assert {"peer added", "peer removed", "peer reset"} <= set(actions)
    finally:
        store.close()
