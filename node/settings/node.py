"""The ``node`` section (AE title, ports, TLS, HTTP, data directory) and the ``store`` section."""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from node.settings.base import _check_ae_title, _is_loopback, _Strict


class TlsSection(_Strict):
    """DICOM TLS (PS3.15 Annex B, BCP 195: TLS 1.2 or newer). ``cert``/``key`` (PEM) are this
    node's certificate, also presented to peers that ask for a client certificate; ``ca`` the
    certificate authority whose client certificates are trusted. With ``port``, TLS is served
    there and ``node.dicom_port`` stays plain (``0`` turns it off); without, ``node.dicom_port``
    speaks only TLS."""

    enabled: bool = False
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    require_client_cert: bool = False
    port: int | None = Field(None, ge=1, le=65535)

    @model_validator(mode="after")
    def _complete(self) -> TlsSection:
        if self.enabled and (self.cert is None or self.key is None):
            raise ValueError("TLS needs cert and key (PEM files)")
        if self.require_client_cert and self.ca is None:
            raise ValueError("require_client_cert needs ca: the authority of trusted clients")
        for name in ("cert", "key", "ca"):
            path: Path | None = getattr(self, name)
            if self.enabled and path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file {path}")
        return self


class NodeSection(_Strict):
    """This node's own identity, listeners and storage."""

    ae_title: str = "AINODE"
    dicom_port: int = Field(
        11112, ge=0, le=65535, description="0: no plain DICOM port (only node.tls.port)")
    http_port: int = Field(
        8080, ge=0, le=65535,
        description="health, metrics, admin API, dashboard, STOW-RS in; 0: no HTTP server")
    http_bind: str = Field(
        "127.0.0.1", description="the HTTP server's address; beyond loopback only with a token")
    http_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values (names or addresses, *.domain) the HTTP server answers "
        "beyond loopback and http_bind, so DNS rebinding cannot reach it; with a wildcard "
        "http_bind and none given, any (the token guards it)")
    http_token: SecretStr | None = Field(
        None, description="Bearer token for everything but /healthz and /readyz (better given "
        "as AINODE__NODE__HTTP_TOKEN than written in the file)")
    bind: str = "0.0.0.0"  # noqa: S104 - a DICOM node listens for the PACS on the network
    data_dir: Path = Path("var")
    accept_unknown_callers: bool = False
    check_caller_host: bool = Field(
        False, description="a peer's AE title is accepted only from its hosts (else its host)")
    min_free_disk_mb: int = Field(1024, ge=0)
    max_instance_mb: int = Field(
        4096, ge=0, description="larger instances are refused (0xA700), not kept; 0: no limit")
    max_associations: int = Field(16, ge=1)
    acse_timeout_s: float = Field(30, gt=0)
    dimse_timeout_s: float = Field(60, gt=0)
    network_timeout_s: float = Field(60, gt=0)
    shutdown_grace_s: float = Field(
        30, ge=0, description="on SIGTERM: how long associations in progress may finish")
    max_pdu_size: int = Field(0, ge=0, description="0 = unlimited (fastest for large instances)")
    fsync: bool = Field(True, description="fsync every instance before acknowledging it")
    receive_to_disk: bool = Field(
        True, description="stream each data set to its spool file as it arrives"
    )
    event_driven_reactor: bool = Field(
        True, description="wake pynetdicom's reactors on events instead of 1 ms polling"
    )
    receiver_processes: int = Field(
        1, ge=1, le=64,
        description="receiver processes sharing the DICOM port (SO_REUSEPORT) under ainode serve",
    )

    tls: TlsSection = TlsSection()

    _ae = field_validator("ae_title")(_check_ae_title)

    @model_validator(mode="after")
    def _http_open_only_with_a_token(self) -> NodeSection:
        if self.http_port and self.http_token is None and not _is_loopback(self.http_bind):
            raise ValueError(f"http_bind {self.http_bind} is beyond this machine: set "
                             "node.http_token (AINODE__NODE__HTTP_TOKEN) or bind 127.0.0.1")
        if self.http_token is not None and len(self.http_token.get_secret_value()) < 16:
            raise ValueError("http_token: use at least 16 characters")
        return self

    @model_validator(mode="after")
    def _something_listens(self) -> NodeSection:
        tls_port = self.tls.port if self.tls.enabled else None
        if self.dicom_port == 0 and tls_port is None:
            raise ValueError("dicom_port 0 needs tls.enabled with tls.port: nothing would listen")
        if tls_port is not None and tls_port == self.dicom_port:
            raise ValueError("tls.port must differ from dicom_port (omit it to serve only TLS "
                             "on dicom_port)")
        return self


class StoreSection(_Strict):
    """Where the job store lives: SQLite under ``node.data_dir`` (default, one machine) or a
    PostgreSQL database that several nodes share (``postgresql://user:pass@host:port/db``;
    better given as ``AINODE__STORE__URL`` than written in the file)."""

    url: str | None = None

    @field_validator("url")
    @classmethod
    def _known_engine(cls, url: str | None) -> str | None:
        if url and not url.startswith(("postgresql://", "postgres://", "sqlite:///")):
            raise ValueError("must start with postgresql:// or sqlite:///")
        return url


