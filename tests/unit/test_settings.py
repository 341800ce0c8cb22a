from __future__ import annotations

from pathlib import Path

import pytest

from node.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_is_valid() -> None:
    settings = load_settings(ROOT / "config" / "node.yaml", environ={})
    assert settings.node.ae_title == "AINODE"
    assert settings.node.dicom_port == 11112
    assert settings.node.min_free_disk_mb == 1024
    assert settings.peer("PACS").ae_title == "ORTHANC"
    assert settings.inference.backend == "embedded"
    assert settings.series.quiet_seconds == 5


def test_defaults_without_a_file() -> None:
    settings = load_settings(None, environ={})
    assert (settings.node.ae_title, settings.node.dicom_port, settings.node.http_port) == (
        "AINODE", 11112, 8080)
    assert settings.node.accept_unknown_callers is False


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("node: {dicom_port: 70000}", "node.dicom_port"),
        ("node: {ae_title: THIS_TITLE_IS_TOO_LONG}", "node.ae_title"),
        ("node: {colour: blue}", "node.colour"),
        ("peers: [{name: A, ae_title: A, host: h}]", "peers.0.port"),
        ("series: {quiet_seconds: -1}", "series.quiet_seconds"),
        ("inference: {backend: triton}", "inference"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, environ={})
    assert f"  {key}" in str(excinfo.value)


def test_duplicate_peer_names_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("peers: [{name: A, ae_title: X, host: h, port: 1},"
                    " {name: A, ae_title: Y, host: h, port: 2}]")
    with pytest.raises(ConfigError, match="repeated: A"):
        load_settings(path, environ={})


def test_environment_overrides_any_key(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("node: {dicom_port: 104}")
    settings = load_settings(path, environ={
        "AINODE__NODE__DICOM_PORT": "11113",
        "AINODE__NODE__ACCEPT_UNKNOWN_CALLERS": "true",
        "AINODE__PEERS": "[{name: P, ae_title: P, host: h, port: 4242}]",
        "UNRELATED": "x",
    })
    assert settings.node.dicom_port == 11113
    assert settings.node.accept_unknown_callers is True
    assert settings.peer("P").port == 4242


def test_bad_environment_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"node\.dicom_port"):
        load_settings(None, environ={"AINODE__NODE__DICOM_PORT": "many"})


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", environ={})
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(path, environ={})
