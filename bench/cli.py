#!/usr/bin/env python3
"""Start-up of the command line: wall seconds of ``ainode version`` and ``ainode --help``
(median of ``--rounds`` runs, as separate processes), beside a bare ``python -c pass`` in the
same run, so the ratio is what to quote. Prints JSON.

    .venv/bin/python bench/cli.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

AINODE = str(Path(sys.executable).parent / "ainode")


def _median_s(command: list[str], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds
    python = _median_s([sys.executable, "-c", "pass"], rounds)
    version = _median_s([AINODE, "version"], rounds)
    helped = _median_s([AINODE, "--help"], rounds)
    print(json.dumps({"rounds": rounds, "python_seconds_median": python,
                      "version_seconds_median": version, "help_seconds_median": helped,
                      "version_over_python": round(version / python, 1)}, indent=2))


if __name__ == "__main__":
    main()
