#!/usr/bin/env python3
"""Write each model's GPU variant, `model_repository/<name>/configs/gpu.pbtxt`.

Triton reads a custom model configuration instead of config.pbtxt when started with
`--model-config-name=gpu` (it must be complete). The variant is the default configuration with
its instance groups on the GPU (KIND_GPU, one instance per visible GPU unless the default asks
for more), so the two cannot differ in inputs, outputs or ainode's parameters.
Usage: scripts/gpu_configs.py [--check]   (--check: exit 1 if a file is missing or stale)
"""

from __future__ import annotations

import sys
from pathlib import Path

from node.infer.gpu_config import gpu_variant, gpu_variant_path

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"


def main(check: bool) -> int:
    stale = []
    for default in sorted(REPOSITORY.glob("*/config.pbtxt")):
        target = gpu_variant_path(default.parent)
        wanted = gpu_variant(default.read_text())
        if check:
            if not target.exists() or target.read_text() != wanted:
                stale.append(str(target.relative_to(ROOT)))
            continue
        target.parent.mkdir(exist_ok=True)
        target.write_text(wanted)
        print(f"wrote {target.relative_to(ROOT)}")
    if stale:
        print("missing or stale (run scripts/gpu_configs.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
