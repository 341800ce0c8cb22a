from __future__ import annotations

from pathlib import Path

import yaml

from node.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_the_node_with_the_shipped_config() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["ainode"]
    assert service["command"][:2] == ["ainode", "serve"]
    settings = load_settings(ROOT / "config" / "node.yaml", environ={})
    published = {int(p.split(":")[1].split("/")[0]) for p in service["ports"]}
    assert {settings.node.dicom_port, settings.node.http_port} <= published
    assert service["environment"]["AINODE__NODE__DATA_DIR"] in " ".join(service["volumes"])
    assert "ainode-data" in compose["volumes"]
    assert "profiles" not in service  # `docker compose up` runs the single node


def test_the_multi_node_profile_shares_one_store_and_one_data_volume() -> None:
    """postgres, triton and the three roles, each role on the same PostgreSQL store and the
    same shared volume at the same data_dir, and each role's effective settings valid."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    profile = {name for name, s in services.items() if "multi-node" in s.get("profiles", [])}
    assert profile == {"postgres", "triton", "receiver", "worker", "sender"}
    for role in ("receiver", "worker", "sender"):
        service = services[role]
        command = service["command"]
        assert command[:4] == ["ainode", "serve", "--role", role], command
        environment = {k: str(v) for k, v in service["environment"].items()}
        url = environment["AINODE__STORE__URL"]
        assert url.startswith("postgresql://") and "@postgres:5432/" in url
        data_dir = environment["AINODE__NODE__DATA_DIR"]
        assert f"ainode-shared:{data_dir}" in service["volumes"]
        assert services[role]["depends_on"]["postgres"] == {"condition": "service_healthy"}
        settings = load_settings(ROOT / "config" / "node.yaml", environ=environment)
        assert settings.store.url == url and str(settings.node.data_dir) == data_dir
        if role == "worker":
            assert settings.inference.backend == "triton"
            host = (settings.inference.triton_url or "").split(":")[0]
            assert host == "triton" and "triton" in service["depends_on"]
    assert "11112:11112" in services["receiver"]["ports"]
    gpu = services["triton"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert {"ainode-db", "ainode-shared"} <= set(compose["volumes"])
