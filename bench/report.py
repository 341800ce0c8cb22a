#!/usr/bin/env python3
"""The README's table of issue 29's speed targets, made from the benchmarks' own JSON.

Reads ``bench/results/`` (what the commands below printed, kept as they came out) and prints
the Markdown table between the README's ``bench-targets`` markers; ``--write`` puts it there.
``tests/unit/test_readme.py`` checks that the README holds exactly this table, so the figures
quoted cannot drift from the measured ones.

    .venv/bin/python bench/e2e.py --rounds 3 > bench/results/e2e-body.json
    .venv/bin/python bench/e2e.py --rounds 3 --pipelines both --workers 2 \\
        > bench/results/e2e-both.json
    .venv/bin/python bench/ingest.py --rounds 3 --senders 4 \\
        --variant rp4:AINODE__NODE__RECEIVER_PROCESSES=4 --bare-pynetdicom 4 \\
        > bench/results/ingest.json
    .venv/bin/python bench/load.py --rounds 3 > bench/results/load.json
    .venv/bin/python bench/report.py --write
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
START, END = "<!-- bench-targets:start -->", "<!-- bench-targets:end -->"

# what the issue measured on main before this work, for the "before" column
BEFORE = {
    "ct_body_seg": "2.2-2.5 s",
    "ct_lesion_unet": "4.0-4.7 s (incl. transforms)",
    "one_sender": "not measured",
    "four_senders": "0.54",
    "sqlite": "692 /h, p95 63 s",
    "postgresql": "657 /h, p95 63 s",
}


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RESULTS / name).read_text())
    return data


def _met(value: bool) -> str:
    return "yes" if value else "**no**"


def _floor(figures: dict[str, Any], key: str, unit: str = " s") -> str:
    return f"{figures[key]:.2f}{unit}" if key in figures else "-"


def rows() -> list[tuple[str, str, str, str, str, str]]:
    """(measure, target, before, measured, the same run's floor or ceiling, met) per
    target of the issue."""
    body = _load("e2e-body.json")["seconds_median"]
    both = _load("e2e-both.json")["seconds_median"]
    ingest = _load("ingest.json")["workloads"]
    load = _load("load.json")
    one = ingest["ct134"]["ratio_ainode_over_pynetdicom_bare"]  # the default: one receiver
    four_name = next(name for name in ingest if name.startswith("ct402x"))
    four = ingest[four_name]["ratio_ainode_rp4_over_pynetdicom_bare"]
    table = [
        ("ct_body_seg alone: last result in Orthanc - quiet period - backend time",
         "<= 1.0 s", BEFORE["ct_body_seg"], f"{body['node_seconds_ct_body_seg']:.2f} s",
         _floor(body, "floor_ct_body_seg"), _met(body["node_seconds_ct_body_seg"] <= 1.0)),
        ("ct_lesion_unet beside ct_body_seg (2 workers): the same",
         "<= 2.0 s", BEFORE["ct_lesion_unet"], f"{both['node_seconds_ct_lesion_unet']:.2f} s",
         _floor(both, "floor_ct_lesion_unet"), _met(both["node_seconds_ct_lesion_unet"] <= 2.0)),
        ("receive, 1 sender (134 CT slices, 1 receiver process): node / bare pynetdicom",
         ">= 0.8", BEFORE["one_sender"], f"{one:.2f}",
         _floor(ingest["ct134"], "ceiling_ratio_with_durable_write", ""), _met(one >= 0.8)),
        (f"receive, 4 senders ({ingest[four_name]['instances']} instances, 4 receiver "
         "processes): node / bare pynetdicom", ">= 0.8", BEFORE["four_senders"], f"{four:.2f}",
         "-", _met(four >= 0.8)),
    ]
    for store, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        if store not in load:
            continue
        figures = load[store]
        table.append((
            f"load, {label}: 20 CTs, 4 senders, ct_body_seg, 2 workers "
            "(lost / duplicates must be 0)",
            ">= 900 studies/h", BEFORE[store],
            f"{figures['studies_per_hour_median']:.0f} /h, "
            f"p95 {figures['latency_p95_s_median']:.0f} s, "
            f"lost {figures['instances_lost_max']}, "
            f"duplicates {figures['duplicate_results_max']}", "-",
            _met(bool(figures["within_target"]))))
    return table


def table() -> str:
    lines = ["| measure (medians of 3 rounds, this 2-core machine) | target | before | now "
             "| floor / ceiling, same run | met |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows()]
    return "\n".join(lines)


def readme_block(text: str) -> str:
    """What the README holds between the markers."""
    match = re.search(re.escape(START) + r"\n(.*?)\n" + re.escape(END), text, re.S)
    if match is None:
        raise SystemExit(f"README.md has no {START} ... {END} block")
    return match.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the README's table")
    args = parser.parse_args()
    rendered = table()
    if args.write:
        text = README.read_text()
        README.write_text(text.replace(readme_block(text), rendered))
    print(rendered)


if __name__ == "__main__":
    main()
