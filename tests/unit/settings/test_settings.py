from __future__ import annotations

from pathlib import Path

import pytest

from node.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[3]


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
        ("audit: {syslog: arr.example}", "audit.syslog"),
        ("audit: {syslog: 'arr.example:99999'}", "audit.syslog"),
        ("audit: {transport: tls}", "audit.transport"),
        ("retention: {days: -1}", "retention.days"),
        ("retention: {high_water_percent: 120}", "retention.high_water_percent"),
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


def test_secrets_are_never_printed_and_can_come_from_files(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from node.cli import app
    from node.settings import dump_settings

    secret_file = tmp_path / "pacs-password"
    secret_file.write_text("from-a-file\n")
    config = tmp_path / "node.yaml"
    config.write_text(
        "peers:\n"
        "  - {name: WEB, ae_title: W, host: h, port: 1, dicomweb_url: 'http://h/dicom-web',\n"
        "     token: tok3n-in-yaml}\n"
        f"  - {{name: BASIC, ae_title: B, host: h, port: 2, username: u,\n"
        f"     password_file: {secret_file}}}\n"
        "  - {name: PLAIN, ae_title: P, host: h, port: 3, username: u, password: pa55word}\n")
    settings = load_settings(config, environ={})
    assert settings.peer("BASIC").secret_value("password") == "from-a-file"
    assert settings.peer("WEB").secret_value("token") == "tok3n-in-yaml"
    printed = dump_settings(settings) + repr(settings) + str(settings.peer("PLAIN"))
    assert not {"from-a-file", "tok3n-in-yaml", "pa55word"} & set(printed.split())
    assert "from-a-file" not in printed and "tok3n" not in printed and "pa55" not in printed
    result = CliRunner().invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 0, result.output
    assert "WEB" in result.output and "**********" in result.output
    assert "tok3n" not in result.output and "pa55" not in result.output
    assert "from-a-file" not in result.output


def test_a_secret_given_twice_or_unreadable_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("peers:\n  - {name: A, ae_title: A, host: h, port: 1, password: x,\n"
                      f"     password_file: {tmp_path / 'p'}}}\n")
    with pytest.raises(ConfigError, match=r"peers\.0.*one of password, password_file"):
        load_settings(config, environ={})
    config.write_text(f"peers:\n  - {{name: A, ae_title: A, host: h, port: 1,\n"
                      f"     token_file: {tmp_path / 'missing'}}}\n")
    with pytest.raises(ConfigError, match=r"peers\.0.*token_file .*missing"):
        load_settings(config, environ={})


def test_a_secret_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("peers:\n  - {name: A, ae_title: A, host: h, port: 1, dicomweb_url: 'http://u',\n"
                      "     token_env: PACS_TOKEN}\n")
    with pytest.raises(ConfigError, match=r"peers\.0.*token_env: PACS_TOKEN is not set"):
        load_settings(config, environ={})
    monkeypatch.setenv("PACS_TOKEN", "t0ken-from-env")
    settings = load_settings(config, environ={})
    assert settings.peer("A").secret_value("token") == "t0ken-from-env"
    assert "t0ken" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("node: {tls: {enabled: true}}", "node.tls", "needs cert and key"),
        ("node: {tls: {enabled: true, cert: CERT, key: KEY, require_client_cert: true}}",
         "node.tls", "needs ca"),
        ("node: {tls: {enabled: true, cert: CERT, key: /nonexistent.key}}", "node.tls",
         "no such file /nonexistent.key"),
        ("node: {dicom_port: 0}", "node", "nothing would listen"),
        ("node: {dicom_port: 0, tls: {enabled: true, cert: CERT, key: KEY}}", "node",
         "nothing would listen"),
        ("node: {dicom_port: 2762, tls: {enabled: true, cert: CERT, key: KEY, port: 2762}}",
         "node", "must differ"),
        ("node: {tls: {enabled: true, cert: CERT, key: KEY, version: 1.0}}", "node.tls.version",
         "Extra inputs"),
    ],
)
def test_an_incomplete_tls_configuration_says_what_is_missing(
        tmp_path: Path, text: str, key: str, reason: str) -> None:
    for name in ("CERT", "KEY"):
        (tmp_path / name.lower()).write_text("placeholder")
        text = text.replace(name, str(tmp_path / name.lower()))
    path = tmp_path / "node.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, environ={})
    assert f"  {key}" in str(excinfo.value) and reason in str(excinfo.value)
