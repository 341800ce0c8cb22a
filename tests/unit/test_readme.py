"""The README's CLI block is a contract: every command it lists exists with those words."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from node.cli import app

README = Path(__file__).resolve().parents[2] / "README.md"


def _cli_block() -> list[list[str]]:
    text = README.read_text()
    block = text.split("## CLI", 1)[1].split("```", 2)[1]
    commands = []
    for line in block.splitlines():
        match = re.match(r"ainode ((?:[a-z]+ ?)+)", line.strip())
        if match:
            commands.append(match.group(1).split())
    return commands


def test_every_command_in_the_readme_exists() -> None:
    commands = _cli_block()
    assert ["requeue", "jobs"] in [c[:2] for c in commands]
    for words in commands:  # the lower-case words: "requeue jobs", "config check", "send"
        result = CliRunner().invoke(app, [*words, "--help"])
        assert result.exit_code == 0, f"README lists `ainode {' '.join(words)}`: {result.output}"
        assert "Usage: " in result.output and " ".join(words) in result.output


def test_the_readme_store_example_is_a_valid_configuration(tmp_path: Path) -> None:
    """The multi-node snippet, as written in the README, configures a PostgreSQL store and a
    shared data directory; the environment override it recommends wins over the file."""
    from node.settings import load_settings

    section = README.read_text().split("## Growing from one node to several", 1)[1]
    snippet = section.split("```yaml", 1)[1].split("```", 1)[0]
    config = tmp_path / "node.yaml"
    config.write_text(snippet)
    settings = load_settings(config, environ={})
    assert settings.store.url == "postgresql://ainode:secret@db.hospital.local:5432/ainode"
    assert str(settings.node.data_dir) == "/mnt/ainode"
    overridden = load_settings(config, environ={"AINODE__STORE__URL": "postgresql://a@b/c"})
    assert overridden.store.url == "postgresql://a@b/c"


def test_every_benchmark_command_in_the_readme_runs_with_those_options() -> None:
    """Each `bench/*.py` line of the Benchmarks block names a script that exists and options
    it accepts (its --help lists them); each `make bench-*` is a Makefile target."""
    import subprocess
    import sys

    root = README.parent
    block = README.read_text().split("## Benchmarks", 1)[1].split("```", 2)[1]
    scripts, targets = 0, 0
    for line in block.splitlines():
        command = line.split("#", 1)[0].split()
        if "make" in command:
            target = command[command.index("make") + 1]
            assert re.search(rf"^{re.escape(target)}:", (root / "Makefile").read_text(),
                             re.MULTILINE), f"README lists `make {target}`"
            targets += 1
            continue
        script = next((word for word in command if word.startswith("bench/")), None)
        if script is None:
            continue
        help_text = subprocess.run([sys.executable, str(root / script), "--help"], cwd=root,
                                   capture_output=True, text=True, timeout=120)
        assert help_text.returncode == 0, f"{script} --help: {help_text.stderr[-500:]}"
        for option in (word for word in command if word.startswith("--")):
            assert option in help_text.stdout, f"README runs {script} with {option}"
        scripts += 1
    assert scripts >= 5 and targets >= 2


def _yaml_after(heading: str) -> str:
    section = README.read_text().split(heading, 1)[1]
    return section.split("```yaml", 1)[1].split("```", 1)[0]


def test_the_readme_audit_and_retention_examples_are_valid_configurations(
        tmp_path: Path) -> None:
    """The audit (syslog) and retention snippets load as written, with the meaning the text
    gives them."""
    from node.settings import load_settings

    config = tmp_path / "node.yaml"
    config.write_text(_yaml_after("### Audit trail"))
    audit = load_settings(config, environ={}).audit
    assert audit.collector == ("arr.hospital.example", 514) and audit.transport == "tcp"
    assert audit.enterprise_site == "St. Elsewhere Radiology"
    config.write_text(_yaml_after("### Retention"))
    retention = load_settings(config, environ={}).retention
    assert (retention.enabled, retention.days, retention.failed_days,
            retention.high_water_percent) == (True, 7, 30, 90)


def test_the_configuration_table_lists_every_section_of_the_settings() -> None:
    from node.settings import Settings

    table = README.read_text().split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    for section in Settings.model_fields:
        assert f"| `{section}." in table or f"| `{section}[]" in table, section


def test_every_test_docs_reliability_names_exists() -> None:
    """docs/reliability.md is a contract too: each `file.py::test` it quotes exists."""
    text = (README.parent / "docs" / "reliability.md").read_text()
    named = re.findall(r"`(test_[a-z_]+\.py)::(test_[a-z0-9_]+)", text)
    assert len(named) >= 25
    sources = {p.name: p.read_text() for p in (README.parent / "tests").rglob("test_*.py")}
    for file, test in named:
        assert file in sources, file
        assert f"def {test}(" in sources[file], f"{file}::{test}"


def _research_section() -> str:
    return README.read_text().split("## Research export (de-identified)", 1)[1].split("\n## ")[0]


def test_the_readme_research_example_is_a_valid_configuration(tmp_path: Path) -> None:
    """The research snippet as written: a folder destination with its profile and options,
    and a pipeline whose output kind research names it."""
    from node.settings import load_settings

    snippet = _research_section().split("<!-- research-config -->", 1)[1]
    snippet = snippet.split("```yaml", 1)[1].split("```", 1)[0]
    config = tmp_path / "node.yaml"
    config.write_text(snippet)
    settings = load_settings(config, environ={})
    entry = settings.research[0]
    assert entry.name == "lung-cohort" and entry.include_results and entry.crosswalk
    assert "retain_institution_identity" in entry.all_options()
    assert "clean_structured_content" in entry.all_options()
    assert settings.pipelines[0].research == entry.name
    assert "research" in settings.pipelines[0].outputs


def test_the_readme_profiles_table_is_the_code() -> None:
    from node.settings import DEID_PROFILES

    table = _research_section().split("<!-- research-profiles -->", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1:3] for line in table.strip().splitlines()[2:]]
    documented = {name.strip().strip("`"): tuple(
        o.strip() for o in options.split(",") if o.strip() not in ("", "none"))
        for name, options in rows}
    assert documented == DEID_PROFILES


def test_the_readme_speed_targets_are_the_benchmarks_own_figures() -> None:
    """The table of issue 29's targets is what bench/report.py makes of the JSON kept in
    bench/results/ (the benchmarks' output as it came out): no figure is typed by hand."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_report", README.parent / "bench"
                                                  / "report.py")
    assert spec is not None and spec.loader is not None
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    rendered = report.table()
    assert report.readme_block(README.read_text()) == rendered
    assert len(report.rows()) == 6  # every target: 2 end to end, 2 receive, 2 load (stores)
