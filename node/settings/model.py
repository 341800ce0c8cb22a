"""The whole configuration: :class:`Settings`, loaded from YAML with ``AINODE__SECTION__KEY``
environment overrides, and dumped with secrets masked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
    model_validator,
)

from node.runtime.logs import mask_credentials
from node.settings.base import ENV_PREFIX, ENV_SEPARATOR, RESEARCH_PREFIX, ConfigError, _Strict
from node.settings.node import NodeSection, StoreSection
from node.settings.peers import Notification, Peer, Research
from node.settings.sections import (
    AuditSection,
    DriftSection,
    EgressSection,
    InferenceSection,
    Pipeline,
    RetentionSection,
    SeriesSection,
)


def _require_unique(kind: str, names: list[str]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{kind} names must be unique, repeated: {', '.join(repeated)}")


class Settings(_Strict):
    node: NodeSection = NodeSection()
    peers: list[Peer] = []
    inference: InferenceSection = InferenceSection()
    pipelines: list[Pipeline] = []
    series: SeriesSection = SeriesSection()
    egress: EgressSection = EgressSection()
    store: StoreSection = StoreSection()
    audit: AuditSection = AuditSection()
    retention: RetentionSection = RetentionSection()
    drift: DriftSection = DriftSection()
    notify: list[Notification] = []
    research: list[Research] = []

    @model_validator(mode="after")
    def _unique_peer_names(self) -> Settings:
        _require_unique("peer", [p.name for p in self.peers])
        _require_unique("notify", [n.name for n in self.notify])
        _require_unique("research", [r.name for r in self.research])
        return self

    def research_destination(self, name: str) -> Research | None:
        """The research entry called ``name``, or whose outbox destination is ``name``."""
        name = name.removeprefix(RESEARCH_PREFIX)
        return next((r for r in self.research if r.name == name), None)

    def notification(self, destination: str) -> Notification | None:
        """The notification whose outbox destination is ``destination``."""
        return next((n for n in self.notify if n.destination == destination), None)

    @model_validator(mode="after")
    def _pipelines_are_consistent(self) -> Settings:
        _require_unique("pipeline", [p.name for p in self.pipelines])
        known = {p.name for p in self.peers}
        for index, pipeline in enumerate(self.pipelines):
            unknown = [d for d in pipeline.destinations if d not in known]
            if unknown:
                raise ValueError(
                    f"pipelines.{index}.destinations: unknown peer(s) {', '.join(unknown)}"
                )
            if ("research" in pipeline.outputs) != (pipeline.research is not None):
                raise ValueError(f"pipelines.{index}: the output research and research: NAME "
                                 "go together")
            if pipeline.research and self.research_destination(pipeline.research) is None:
                raise ValueError(f"pipelines.{index}.research: no research entry named "
                                 f"{pipeline.research!r}")
            _check_shadow(index, pipeline, self.pipelines)
        for index, research in enumerate(self.research):
            if research.peer is not None and research.peer not in known:
                raise ValueError(f"research.{index}.peer: unknown peer {research.peer!r}")
        return self

    def peer(self, name: str) -> Peer:
        """The peer called ``name`` (case-sensitive); ``KeyError`` naming the known ones."""
        for candidate in self.peers:
            if candidate.name == name:
                return candidate
        known = ", ".join(p.name for p in self.peers) or "none"
        raise KeyError(f"no peer named {name!r} in peers (known: {known})")

    def peer_by_name(self, name: str) -> Peer | None:
        return next((p for p in self.peers if p.name == name), None)

    def peer_by_ae(self, ae_title: str) -> Peer | None:
        for candidate in self.peers:
            if candidate.ae_title == ae_title.strip():
                return candidate
        return None


def _check_shadow(index: int, pipeline: Pipeline, pipelines: list[Pipeline]) -> None:
    """A shadow names a live pipeline and delivers nothing; a live one names none."""
    where = f"pipelines.{index} ({pipeline.name})"
    if pipeline.mode == "live":
        if pipeline.shadow_of is not None:
            raise ValueError(f"{where}: shadow_of goes with mode: shadow")
        return
    live = next((p for p in pipelines if p.name == pipeline.shadow_of), None)
    if live is None or live.mode != "live":
        raise ValueError(f"{where}: a shadow pipeline names the live pipeline it runs beside "
                         f"(shadow_of: NAME); {pipeline.shadow_of!r} is not one")
    if pipeline.destinations or pipeline.reply_to_sender or "research" in pipeline.outputs \
            or pipeline.urgent_if:
        raise ValueError(f"{where}: a shadow pipeline delivers nothing: no destinations, "
                         "reply_to_sender, research output or urgent_if")


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``AINODE__NODE__DICOM_PORT=104``-style variables (values parsed as YAML)."""
    merged = dict(raw)
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split(ENV_SEPARATOR) if part]
        if not path:
            continue
        cursor = merged
        for part in path[:-1]:
            child = cursor.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            cursor[part] = child
            cursor = child
        cursor[path[-1]] = yaml.safe_load(value) if value else value
    return merged


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {key}: {item['msg']}")
    return "\n".join(lines)


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (or defaults when ``None``), apply env overrides, validate."""
    raw: dict[str, Any] = {}
    source = str(path) if path else "defaults"
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"configuration {path} must be a mapping at the top level")
        raw = loaded
    raw = _apply_env(raw, os.environ if environ is None else environ)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from exc
    return settings


def dump_settings(settings: Settings) -> str:
    """The effective configuration as YAML (what ``ainode config check`` prints)."""
    def masked(value: Any) -> Any:
        if isinstance(value, str):
            return mask_credentials(value)
        if isinstance(value, dict):
            return {key: masked(item) for key, item in value.items()}
        if isinstance(value, list):
            return [masked(item) for item in value]
        return value

    return yaml.safe_dump(masked(settings.model_dump(mode="json")), sort_keys=False)
