"""What ``/readyz``, the dashboard's overview, ``ainode status`` and the models list check:
the job store, the spool, the disk, Triton; and the overview they show."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node.infer.backend import BackendUnavailable
from node.infer.repository import ModelConfigError, ModelNotFound, load_model_spec, model_names
from node.settings import Settings
from node.store.durable import free_disk_bytes, temporary_name
from node.store.index import InstanceIndex
from node.store.jobs import JobStore
from node.store.layout import data_dir


def check_store(store: JobStore) -> str | None:
    try:
        InstanceIndex(store).reachable()
    except Exception as exc:
        return f"job store unreachable ({exc.__class__.__name__})"
    return None


def check_spool(settings: Settings) -> str | None:
    """A file can be written and removed where instances are spooled."""
    tmp_dir = data_dir(settings).spool_temporaries
    try:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        probe = temporary_name(tmp_dir / "ready", tmp_dir)
        probe.write_bytes(b"ready")
        probe.unlink()
    except OSError as exc:
        return f"spool not writable ({exc.strerror})"
    return None


def free_bytes(settings: Settings) -> int:
    """Free space where the data directory is (or will be: its nearest existing parent, for
    a node that has not run yet on a PostgreSQL store)."""
    return min(free_disk_bytes(settings.node.data_dir),
               free_disk_bytes(data_dir(settings).spool))


def check_disk(settings: Settings) -> str | None:
    floor = settings.node.min_free_disk_mb * 1024 * 1024
    free = free_bytes(settings)
    if floor and free < floor:
        return (f"free disk {free // (1024 * 1024)} MB below node.min_free_disk_mb "
                f"({settings.node.min_free_disk_mb} MB): instances are refused")
    return None


def _triton(settings: Settings) -> Any:
    from node.infer.triton import TritonBackend

    inference = settings.inference
    return TritonBackend(inference.triton_url or "", protocol=inference.triton_protocol,
                         timeout_s=5, retries=0)


def check_triton(settings: Settings) -> str | None:
    """Triton live and ready, when it is the backend."""
    if settings.inference.backend != "triton":
        return None
    backend = _triton(settings)
    try:
        if not backend.server_ready():
            return f"Triton at {settings.inference.triton_url} is not ready"
        missing = [name for name in sorted({p.model for p in settings.pipelines})
                   if not backend.model_ready(name)]
        if missing:
            return (f"Triton at {settings.inference.triton_url} has no ready model "
                    f"{', '.join(missing)} (named by pipelines)")
    except BackendUnavailable as exc:
        return str(exc)
    finally:
        backend.close()
    return None


def checks(settings: Settings, store: JobStore) -> dict[str, str | None]:
    """Each check by name, ``None`` when it passed; Triton only when it is the backend."""
    found = {"store": check_store(store), "spool": check_spool(settings),
             "disk": check_disk(settings)}
    if settings.inference.backend == "triton":
        found["triton"] = check_triton(settings)
    return found


@dataclass(frozen=True)
class Overview:
    """What the dashboard's overview and ``ainode status`` show first."""

    received_hour: int
    received_day: int
    free_bytes: int
    floor_bytes: int
    backend: str
    checks: dict[str, str | None]

    @property
    def backend_ready(self) -> bool:
        return self.checks.get("triton") is None

    @property
    def disk_low(self) -> bool:
        return self.free_bytes < self.floor_bytes


def overview(settings: Settings, store: JobStore, now: float) -> Overview:
    def received_since(seconds: float) -> int:
        return InstanceIndex(store).received_since(now - seconds)

    return Overview(received_since(3600), received_since(86400), free_bytes(settings),
                    settings.node.min_free_disk_mb * 1024 * 1024, settings.inference.backend,
                    checks(settings, store))


def bytes_text(count: float) -> str:
    """Bytes as a person reads them (``1.5 GB``)."""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"


def models(settings: Settings) -> list[dict[str, Any]]:
    """Each model of the repository: version, kind, labels, and whether it can run now."""
    repository = settings.inference.model_repository
    backend = _triton(settings) if settings.inference.backend == "triton" else None
    listed = []
    try:
        for name in model_names(repository):
            entry: dict[str, Any] = {"name": name}
            try:
                spec = load_model_spec(repository, name)
                entry.update(version=spec.version, output_kind=spec.output_kind,
                             labels=list(spec.labels), versions=list(spec.available),
                             pipelines=[p.name for p in settings.pipelines if p.model == name],
                             pinned={p.name: p.version for p in settings.pipelines
                                     if p.model == name and p.version is not None})
                if backend is not None:
                    backend.check(spec)
                entry["ready"], entry["reason"] = True, None
            except (ModelNotFound, ModelConfigError, BackendUnavailable) as exc:
                entry["ready"], entry["reason"] = False, str(exc)
            listed.append(entry)
    finally:
        if backend is not None:
            backend.close()
    return listed
