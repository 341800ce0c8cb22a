from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from node.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment with ``${VAR:?message}`` as a value a user would set."""
    return {k: re.sub(r"\$\{(\w+)[^}]*\}", "x" * 20, str(v))
            for k, v in service["environment"].items()}


def test_compose_runs_the_node_on_triton_with_the_shipped_config() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    service = services["ainode"]
    assert service["command"][:2] == ["ainode", "serve"]
    assert service["build"] == "." and "profiles" not in service  # `up` runs it
    environment = _environment(service)
    settings = load_settings(ROOT / "config" / "node.yaml", environ=environment)
    published = {int(p.split(":")[1].split("/")[0]) for p in service["ports"]}
    assert {settings.node.dicom_port, settings.node.http_port} <= published
    # reachable from outside the container: bound beyond loopback, so a token is required
    assert settings.node.http_bind == "0.0.0.0" and settings.node.http_token is not None
    assert "${AINODE_HTTP_TOKEN:?" in compose_text()
    assert f"ainode-data:{settings.node.data_dir}" in service["volumes"]
    assert "ainode-data" in compose["volumes"]
    health = " ".join(service["healthcheck"]["test"])
    assert f"http://127.0.0.1:{settings.node.http_port}/healthz" in health
    # inference on the tritonserver service, which serves the same model repository
    assert settings.inference.backend == "triton"
    host, port = (settings.inference.triton_url or "").split(":")
    triton = services[host]
    assert port == "8001" and "profiles" not in triton
    assert service["depends_on"][host] == {"condition": "service_healthy"}
    # the NGC image, with scipy for the staged models' BLS step (deploy/triton/Dockerfile)
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3",
                        triton["build"]["args"]["TRITON_IMAGE"])
    dockerfile = (ROOT / triton["build"]["context"] / "Dockerfile").read_text()
    assert "FROM ${TRITON_IMAGE}" in dockerfile and "scipy" in dockerfile
    assert not triton["image"].startswith("nvcr.io/")  # never tag our build as NVIDIA's
    mount = next(v for v in triton["volumes"] if v.startswith("./model_repository:"))
    models = mount.split(":")[1]
    assert f"--model-repository={models}" in triton["command"]
    assert f"./model_repository:{settings.inference.model_repository}:ro" in service["volumes"]
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    gpu = triton["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert "KIND_GPU" not in (ROOT / "model_repository").joinpath(
        "ct_body_seg", "config.pbtxt").read_text()  # GPU by the container, not the config


def test_the_demo_profile_is_a_pacs_with_dicomweb_and_ohif_pointed_at_the_node() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    demo = {name for name, s in services.items() if "demo" in s.get("profiles", [])}
    assert demo == {"orthanc"}
    orthanc = _environment(services["orthanc"])
    assert orthanc["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    assert orthanc["OHIF_PLUGIN_ENABLED"] == "true"
    assert orthanc["ORTHANC__OHIF__DATA_SOURCE"] == "dicom-web"
    node = load_settings(ROOT / "config" / "node.yaml", environ=_environment(services["ainode"]))
    modalities = json.loads(orthanc["ORTHANC__DICOM_MODALITIES"])
    assert modalities["ainode"] == [node.node.ae_title, "ainode", node.node.dicom_port]
    stow = json.loads(orthanc["ORTHANC__DICOM_WEB__SERVERS"])["ainode"]
    assert stow["Url"] == f"http://ainode:{node.node.http_port}/dicomweb/"
    assert stow["HttpHeaders"]["Authorization"].startswith("Bearer ")
    pacs = node.peer("PACS")  # the shipped config's PACS is Orthanc's AE title
    assert (pacs.ae_title, pacs.port) == (orthanc["ORTHANC__DICOM_AET"], 4242)
    assert "4242:4242" in services["orthanc"]["ports"]


def test_the_dockerfile_installs_the_package_as_a_non_root_user_with_a_healthcheck() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert re.fullmatch(r"FROM python:3\.1[1-9]-slim", instructions[0])
    assert "RUN pip install ." in instructions
    user = next(line for line in instructions if line.startswith("USER "))
    assert user.split()[1] not in ("root", "0")
    assert instructions.index(user) > instructions.index("RUN pip install .")
    healthcheck = " ".join(lines[lines.index(next(
        line for line in lines if line.startswith("HEALTHCHECK"))):][:2])
    assert "/healthz" in healthcheck
    assert instructions[-1] == 'CMD ["ainode", "serve", "--config", "/etc/ainode/node.yaml"]'
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var", ".git"} <= set(ignored)


def compose_text() -> str:
    return (ROOT / "compose.yaml").read_text()


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


def test_the_monitoring_profile_runs_prometheus_with_the_alerts_and_grafana_with_the_dashboard(
) -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == ["monitoring"] and grafana["profiles"] == ["monitoring"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    entrypoint = " ".join(prometheus["entrypoint"])
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus-compose.yml").read_text())
    assert "--config.file=/etc/prometheus/prometheus-compose.yml" in entrypoint
    assert config["rule_files"] == ["ainode-rules.yml"]
    (scrape,) = config["scrape_configs"]
    settings = load_settings(ROOT / "config" / "node.yaml",
                             environ=_environment(services["ainode"]))
    assert scrape["static_configs"][0]["targets"] == [f"ainode:{settings.node.http_port}"]
    # the token reaches Prometheus through the file its entrypoint writes, never the config
    assert scrape["authorization"]["credentials_file"] in entrypoint
    assert "${AINODE_HTTP_TOKEN:?" in prometheus["environment"]["AINODE_HTTP_TOKEN"]
    assert "./deploy/grafana/ainode.json:/var/lib/grafana/dashboards/ainode.json:ro" in \
        grafana["volumes"]
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/ainode.yml")
                              .read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert json.loads((ROOT / "deploy/grafana/ainode.json").read_text())["uid"] == "ainode"
