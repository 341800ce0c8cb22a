"""What made a result, recorded with every job: the model (name, semantic and numbered version,
and a SHA-256 of its files: the version's folder, its config.pbtxt and, for a staged model, its
stages'), the node's version, a digest of the pipeline's configuration, the backend, and a
SHA-256 of each input instance file (``provenance.json`` beside the results; their combined
digest in the job's summary). ``ainode replay`` checks a job against it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from node import __version__
from node.infer.repository import ModelSpec, load_model_spec
from node.settings import Pipeline

_CHUNK = 1 << 20
_file_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> SHA-256


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)  # releases the GIL: other threads of the job run meanwhile
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a model's file, remembered while it is unchanged (size and modification
    time)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _file_digests:
        _file_digests[key] = _sha256(path)
    return _file_digests[key]


def model_digest(spec: ModelSpec) -> str:
    """SHA-256 over the model version's files and its config.pbtxt (names and contents), and
    over its stages' digests."""
    digest = hashlib.sha256()
    folder = spec.model_file.parent
    for path in sorted([*folder.rglob("*"), folder.parent / "config.pbtxt"]):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(f"{path.relative_to(folder.parent)}\0{file_digest(path)}\n".encode())
    for role, name in sorted(spec.stages.items()):
        stage = load_model_spec(spec.repository, name)
        digest.update(f"stage {role} {name}\0{model_digest(stage)}\n".encode())
    return digest.hexdigest()


def pipeline_digest(pipeline: Pipeline) -> str:
    """SHA-256 of the pipeline's configuration as the node read it (canonical JSON)."""
    canonical = json.dumps(pipeline.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def input_digests(paths: list[str]) -> dict[str, str]:
    """file name -> SHA-256 of each input instance file (not remembered: each series is
    read once, and a worker process would otherwise keep every digest it ever took)."""
    return {Path(path).name: _sha256(Path(path)) for path in paths}


def combined(digests: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(digests.items()))
                          .encode()).hexdigest()


def inputs_profile(header: Any) -> dict[str, Any]:
    """What the input series was, as drift monitoring compares it (no patient data): the
    scanner's manufacturer and model, slice thickness, pixel spacing, kVp, series
    description."""
    if header is None:
        return {}

    def number(value: Any) -> float | None:
        try:
            return round(float(value), 3)
        except (TypeError, ValueError):
            return None

    spacing = header.get("PixelSpacing")
    return {
        "manufacturer": str(header.get("Manufacturer", "") or ""),
        "model_name": str(header.get("ManufacturerModelName", "") or ""),
        "slice_thickness_mm": number(header.get("SliceThickness")),
        "pixel_spacing_mm": number(spacing[0]) if spacing else None,
        "kvp": number(header.get("KVP")),
        "series_description": str(header.get("SeriesDescription", "") or ""),
    }


def summary_head(spec: ModelSpec, backend: str, header: Any) -> dict[str, Any]:
    """What every job's summary starts with: the model, its versions, the backend and the
    input's profile (``header``: the first instance's, or None)."""
    return {
        "model": spec.name,
        "model_version": spec.exact_version,
        "model_repository_version": spec.triton_version,
        "backend": backend,
        "inputs_profile": inputs_profile(header),
    }


def record(spec: ModelSpec, pipeline: Pipeline, backend: str, paths: list[str]
           ) -> tuple[dict[str, Any], dict[str, str]]:
    """The job summary's ``provenance`` and the per-instance input digests."""
    inputs = input_digests(paths)
    return {
        "model": spec.name,
        "version": spec.version,
        "repository_version": spec.triton_version,
        "model_sha256": model_digest(spec),
        "node_version": __version__,
        "pipeline_sha256": pipeline_digest(pipeline),
        "backend": backend,
        "inputs": len(inputs),
        "inputs_sha256": combined(inputs),
    }, inputs
