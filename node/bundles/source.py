"""Open a MONAI bundle (a directory or a zip of one) and parse it with MONAI's ``ConfigParser``.

Layout (MONAI bundle specification): ``configs/metadata.json``, ``configs/inference.json`` (or
``.yaml``/``.yml``) and weights in ``models/model.pt`` (a state dict) or ``models/model.ts``
(TorchScript).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from monai.bundle.config_parser import ConfigParser


class BundleRefused(ValueError):
    """The bundle cannot be imported as it is; ``reasons`` lists every problem found."""

    def __init__(self, bundle: str, reasons: list[str]) -> None:
        super().__init__(f"{bundle} cannot be imported:\n" + "\n".join(f"- {r}" for r in reasons))
        self.reasons = reasons


@dataclass
class Bundle:
    name: str  # folder or zip name: the default model name
    root: Path
    metadata: dict[str, Any]
    parser: ConfigParser

    def has(self, key: str) -> bool:
        return key in self.parser.config  # type: ignore[operator]


INFERENCE_CONFIGS = ("inference.json", "inference.yaml", "inference.yml")


def _extract(archive: Path, into: Path) -> Path:
    """Unpack a zip (refusing members that would land outside ``into``); return the bundle root."""
    with zipfile.ZipFile(archive) as bundle_zip:
        for member in bundle_zip.namelist():
            parts = PurePosixPath(member).parts
            if PurePosixPath(member).is_absolute() or ".." in parts:
                raise BundleRefused(archive.name, [f"the zip holds an unsafe path {member!r}"])
        bundle_zip.extractall(into)
    candidates = [into, *sorted(p for p in into.iterdir() if p.is_dir())]
    for candidate in candidates:
        if (candidate / "configs" / "metadata.json").is_file():
            return candidate
    raise BundleRefused(archive.name, ["no configs/metadata.json in the zip"])


def open_bundle(path: Path, workdir: Path, overrides: dict[str, Any] | None = None) -> Bundle:
    """Parse the bundle at ``path``; a zip is unpacked into ``workdir``. ``overrides`` set
    config ids before anything is resolved, as MONAI's own ``--key value`` arguments do (e.g.
    ``displayable_configs#highres: false`` for a bundle's low-resolution model)."""
    name = path.name.removesuffix(".zip")
    root = _extract(path, workdir) if path.is_file() and zipfile.is_zipfile(path) else path
    if root is path and root.is_dir() and root.name in ("configs",):
        root = root.parent
    metadata_file = root / "configs" / "metadata.json"
    if not metadata_file.is_file():
        raise BundleRefused(name, [f"{metadata_file} not found: not a MONAI bundle"])
    config_file = next(
        (root / "configs" / n for n in INFERENCE_CONFIGS if (root / "configs" / n).is_file()),
        None,
    )
    if config_file is None:
        raise BundleRefused(name, ["no configs/inference.json or .yaml"])
    try:
        metadata = json.loads(metadata_file.read_text())
    except json.JSONDecodeError as exc:
        raise BundleRefused(name, [f"configs/metadata.json is not JSON: {exc}"]) from exc
    parser = ConfigParser()
    parser.read_meta(str(metadata_file))
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(root)
    for key, value in (overrides or {}).items():
        if key not in parser:
            raise BundleRefused(name, [f"--override {key}: the bundle has no such setting"])
        parser[key] = value
    return Bundle(name=name, root=root, metadata=metadata, parser=parser)
