"""DICOM TLS against real dcmtk peers: echoscu/storescu with +tls as modalities, storescp +tls
as a PACS that requires our client certificate. Certificates come from the openssl CLI."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.environment import DCMTK_ENV, ct_files, free_port, require, wait_for, wait_port

ECHOSCU = "/usr/bin/echoscu"
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
LEAF = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")


def _openssl(*arguments: str, cwd: Path) -> None:
    subprocess.run(["openssl", *arguments], cwd=cwd, check=True, capture_output=True)


def _authority(folder: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout",
             f"{name}.key", "-out", f"{name}.crt", "-subj", f"/O=ainode tests/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)


def _leaf(folder: Path, name: str, authority: str) -> None:
    (folder / "leaf.ext").write_text(LEAF)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.csr", "-subj", f"/O=ainode tests/CN={name}", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{authority}.crt", "-CAkey",
             f"{authority}.key", "-CAcreateserial", "-days", "2", "-out", f"{name}.crt",
             "-extfile", "leaf.ext", cwd=folder)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hospital-ca signs node, modality and pacs; other-ca signs intruder."""
    folder = tmp_path_factory.mktemp("tls")
    _authority(folder, "hospital-ca")
    _authority(folder, "other-ca")
    for name in ("node", "modality", "pacs"):
        _leaf(folder, name, "hospital-ca")
    _leaf(folder, "intruder", "other-ca")
    return folder


def _tls_section(certs: Path, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "cert": str(certs / "node.crt"), "key": str(certs / "node.key"),
            "ca": str(certs / "hospital-ca.crt"), **extra}


def _dcmtk(tool: str, port: int, *options: str, files: tuple[Path, ...] = (),
           calling: str = "ECHOSCU") -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, "-aet", calling, "-aec", "AINODE", *options, "127.0.0.1",
                           str(port), *map(str, files)], env=DCMTK_ENV, capture_output=True,
                          text=True, timeout=60)


def _client_cert(certs: Path, name: str) -> tuple[str, ...]:
    return ("+tls", str(certs / f"{name}.key"), str(certs / f"{name}.crt"),
            "+cf", str(certs / "hospital-ca.crt"))


def test_tls_port_admits_only_clients_with_a_certificate_from_the_trusted_authority(
        node_factory: Any, certificates: Path) -> None:
    require(ECHOSCU)
    tls_port = free_port()
    node = node_factory(node={"tls": _tls_section(certificates, require_client_cert=True,
                                                  port=tls_port)}).start()
    wait_port(tls_port)
    trusted = _client_cert(certificates, "modality")

    assert _dcmtk(ECHOSCU, tls_port, *trusted).returncode == 0
    stored = _dcmtk(STORESCU, tls_port, *trusted, files=(ct_files()[0],), calling="STORESCU")
    assert stored.returncode == 0, stored.stderr
    assert len(node.stored_files()) == 1

    no_certificate = ("+tla", "+cf", str(certificates / "hospital-ca.crt"))
    assert _dcmtk(ECHOSCU, tls_port, *no_certificate).returncode != 0
    other_authority = ("+tls", str(certificates / "intruder.key"),
                       str(certificates / "intruder.crt"),
                       "+cf", str(certificates / "hospital-ca.crt"))
    assert _dcmtk(ECHOSCU, tls_port, *other_authority).returncode != 0
    assert _dcmtk(ECHOSCU, tls_port).returncode != 0  # plain DICOM on the TLS port

    assert _dcmtk(ECHOSCU, node.port).returncode == 0  # the plain port still serves
    assert _dcmtk(ECHOSCU, tls_port, *trusted).returncode == 0  # and TLS after the failures
    log = node.log()
    assert f"listening as AINODE on 127.0.0.1:{tls_port} (DICOM TLS)" in log
    assert "over TLSv1.3, certificate O=ainode tests,CN=modality" in log or \
        "over TLSv1.2, certificate O=ainode tests,CN=modality" in log
    assert "TLS handshake from 127.0.0.1 failed" in log
    assert node.alive


def test_a_client_that_never_handshakes_does_not_hold_back_the_others(
        node_factory: Any, certificates: Path) -> None:
    """pynetdicom handshakes in its acceptor thread; the node does it per connection."""
    require(ECHOSCU)
    node = node_factory(node={"tls": _tls_section(certificates)}).start()  # TLS only
    silent = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(3)]
    try:
        echo = _dcmtk(ECHOSCU, node.port, *_client_cert(certificates, "modality"), "-to", "20")
        assert echo.returncode == 0, echo.stderr
        assert _dcmtk(ECHOSCU, node.port).returncode != 0  # only TLS on dicom_port
    finally:
        for connection in silent:
            connection.close()


def test_results_go_to_a_tls_peer_that_requires_our_certificate(
        tmp_path: Path, certificates: Path) -> None:
    """dcmtk storescp +tls --require-peer-cert as the PACS; `ainode echo` and `ainode send`
    with the peer marked tls: true; a peer whose certificate the node cannot verify fails."""
    require(STORESCP)
    port, received = free_port(), tmp_path / "pacs"
    received.mkdir()
    pacs = subprocess.Popen(
        [STORESCP, "-aet", "PACS", "+tls", str(certificates / "pacs.key"),
         str(certificates / "pacs.crt"), "+cf", str(certificates / "hospital-ca.crt"),
         "--require-peer-cert", "-od", str(received), str(port)],
        env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=pacs)
        peer = {"name": "PACS", "ae_title": "PACS", "host": "127.0.0.1", "port": port,
                "tls": True, "tls_ca": str(certificates / "hospital-ca.crt")}
        config = tmp_path / "node.yaml"
        config.write_text(yaml.safe_dump({
            "node": {"data_dir": str(tmp_path / "var"),
                     "tls": {"cert": str(certificates / "node.crt"),
                             "key": str(certificates / "node.key")}},
            "peers": [peer]}))
        ainode = str(Path(sys.executable).parent / "ainode")
        echo = subprocess.run([ainode, "echo", "PACS", "--config", str(config)],
                              capture_output=True, text=True, timeout=60)
        assert echo.returncode == 0 and "status 0x0000" in echo.stdout, echo.stderr
        sent = subprocess.run([ainode, "send", "--config", str(config), "--to", "PACS",
                               str(ct_files()[0])], capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        assert wait_for(lambda: len(list(received.iterdir())) == 1, timeout=10)

        config.write_text(yaml.safe_dump({  # the node trusts another authority only
            "node": {"data_dir": str(tmp_path / "var"),
                     "tls": {"cert": str(certificates / "node.crt"),
                             "key": str(certificates / "node.key")}},
            "peers": [{**peer, "tls_ca": str(certificates / "other-ca.crt")}]}))
        refused = subprocess.run([ainode, "echo", "PACS", "--config", str(config)],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1
        assert "no association with PACS" in refused.stderr and "over TLS" in refused.stderr
    finally:
        pacs.terminate()
        pacs.wait(timeout=10)


def test_the_readme_tls_example_configures_both_ports(tmp_path: Path,
                                                       certificates: Path) -> None:
    """The README's snippet, with its /etc/ainode/tls/ files made real: plain 11112, TLS on
    2762 requiring a client certificate, TLS 1.2 at least; the PACS peer over TLS."""
    import ssl

    from node.ingest.dimse import listeners
    from node.settings import load_settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = readme.split("### DICOM TLS", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    config = tmp_path / "node.yaml"
    config.write_text(snippet.replace("/etc/ainode/tls/", f"{certificates}/"))
    settings = load_settings(config, environ={})
    plain, secured = listeners(settings)
    assert (plain.port, plain.ssl_context) == (11112, None)
    assert secured.port == 2762 and secured.ssl_context is not None
    assert secured.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert secured.ssl_context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert settings.peer("PACS").tls and settings.peer("PACS").tls_ca == certificates / \
        "hospital-ca.crt"
