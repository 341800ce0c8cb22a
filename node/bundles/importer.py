"""``ainode models import``: a MONAI bundle -> ``<repository>/<name>/`` (config.pbtxt with the
node's contract, ``1/model.onnx`` or ``1/model.pt``, ``configs/gpu.pbtxt``, and the bundle's
metadata and licence under ``bundle/`` for provenance)."""

from __future__ import annotations

import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from node.bundles.codes import known_codes
from node.bundles.export import (
    build_network,
    distributed_torchscript,
    example_input,
    write_model,
)
from node.bundles.mapping import Contract, map_bundle
from node.bundles.source import Bundle, BundleRefused, open_bundle
from node.infer.repository import ModelSpec, load_model_spec
from node.settings import SegmentSpec

MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class ImportReport:
    spec: ModelSpec
    seconds: float
    export_difference: float
    notes: list[str]


def read_codes_file(path: Path) -> dict[str, dict[str, Any]]:
    """A YAML mapping label -> {category, type, color}, validated like a pipeline's segments."""
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise BundleRefused(path.name, ["the codes file must map label names to their codes"])
    codes = {}
    for label, entry in raw.items():
        try:
            spec = SegmentSpec.model_validate(entry)
        except ValidationError as exc:
            raise BundleRefused(path.name, [f"codes for {label}: {exc.errors()[0]['msg']}"]) \
                from exc
        codes[str(label)] = {
            "category": [spec.category.scheme, spec.category.value, spec.category.meaning],
            "type": [spec.type.scheme, spec.type.value, spec.type.meaning],
            "color": list(spec.color),
        }
    return codes


def target_reasons(name: str, repository: Path, replace: bool) -> list[str]:
    """Why ``<repository>/<name>/`` cannot be written: a name Triton would not take, or an
    entry that exists and is not to be replaced."""
    reasons: list[str] = []
    if not MODEL_NAME.match(name):
        reasons.append(f"model name {name!r} must be letters, digits, _ . -")
    if (repository / name).exists() and not replace:
        reasons.append(f"{repository / name} exists; pass --replace to replace it")
    return reasons


def segments_for(labels: list[str], given: dict[str, dict[str, Any]],
              reasons: list[str]) -> dict[str, dict[str, Any]]:
    """Codes for ``labels[1:]`` (label 0 is background): given, or from the table of common
    names; a label with neither is added to ``reasons``."""
    segments, missing = {}, []
    for label in labels[1:]:
        codes = given.get(label) or known_codes(label)
        if codes is None:
            missing.append(label)
        else:
            segments[label] = codes
    if missing:
        shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if
                                           len(missing) > 12 else "")
        reasons.append(f"no SEG/SR codes for label(s) {shown}: give them in a --codes file")
    return segments


def _parameters(bundle: Bundle, contract: Contract, segments: dict[str, Any],
                fmt: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    metadata = bundle.metadata
    parameters: dict[str, Any] = {
        "ainode_version": str(metadata.get("version", "0")),
        "ainode_output_kind": contract.output_kind,
        "ainode_labels": contract.labels,
        "ainode_segments": segments,
        "ainode_layout": "ras",
        "ainode_preprocess": contract.preprocess,
        "ainode_activation": contract.activation,
        "ainode_invert": contract.invert,
        "ainode_postprocess": contract.postprocess,
        "ainode_source": {
            "monai_bundle": bundle.name,
            "bundle_name": metadata.get("name", bundle.name),
            "bundle_version": metadata.get("version"),
            "monai_version": metadata.get("monai_version"),
            "intended_use": metadata.get("intended_use", ""),
            "format": fmt,
            "overrides": overrides or {},
        },
    }
    if contract.sliding_window:
        parameters["ainode_sliding_window"] = contract.sliding_window
    return parameters


def import_bundle(path: Path, repository: Path, name: str | None = None, fmt: str = "auto",
                  codes_file: Path | None = None, replace: bool = False,
                  overrides: dict[str, Any] | None = None) -> ImportReport:
    """Import the bundle at ``path`` or raise :class:`BundleRefused` listing every reason."""
    started = time.perf_counter()
    given = read_codes_file(codes_file) if codes_file else {}
    with tempfile.TemporaryDirectory(prefix="ainode-bundle-") as workdir, \
            warnings.catch_warnings():
        # MONAI's deprecation notices about the bundle's keys are not the operator's concern
        warnings.filterwarnings("ignore", category=UserWarning, module="monai")
        warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
        bundle = open_bundle(path, Path(workdir), overrides)
        if fmt == "auto":  # the network as distributed when there is one, else an export
            fmt = "torchscript" if distributed_torchscript(bundle) else "onnx"
        model_name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", bundle.name)
        reasons = target_reasons(model_name, repository, replace)
        target = repository / model_name
        contract, mapping_reasons = map_bundle(bundle)
        reasons.extend(mapping_reasons)
        segments = segments_for(contract.labels, given, reasons)
        network = build_network(bundle, reasons)
        if reasons or network is None:
            raise BundleRefused(bundle.name, reasons)
        source = bundle.metadata
        header = (
            f"# {model_name}: imported by `ainode models import` from the MONAI bundle "
            f"{source.get('name', bundle.name)!r} version {source.get('version')}.\n"
            f"# Intended use (from the bundle): {source.get('intended_use', 'not stated')}\n"
            "# The node's contract is in the ainode_* parameters; bundle/ keeps its metadata.\n"
        )
        difference = write_model(
            network, example_input(contract, bundle), contract, fmt, model_name, target,
            _parameters(bundle, contract, segments, fmt, overrides), header, bundle,
        )
    spec = load_model_spec(repository, model_name)
    return ImportReport(spec=spec, seconds=time.perf_counter() - started,
                        export_difference=difference, notes=contract.notes)
