"""``ainode models``: check the pipelines' models on the backend, import a MONAI bundle.
torch and MONAI load inside ``import`` only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from node.cli.console import USAGE, ConfigOption, console, errors, fail, load, row
from node.runtime import logs

app = typer.Typer(help="Model repository commands.", no_args_is_help=True)


@app.command("list")
def models_list(config: ConfigOption = None) -> None:
    """The repository's models: their numbered versions (the newest first, with its semantic
    version), the pipelines that use each (and the version they pin), and whether it runs."""
    from node.operations.readiness import models

    settings = load(config)
    table = Table("model", "version", "versions", "pipelines", "ready")
    for entry in models(settings):
        pinned = entry.get("pinned", {})
        uses = [f"{name} (v{pinned[name]})" if name in pinned else name
                for name in entry.get("pipelines", [])]
        versions = ", ".join(f"v{v}" for v in sorted(entry.get("versions", []), reverse=True))
        row(table, entry["name"], entry.get("version", "-"), versions or "-",
            ", ".join(uses) or "-",
            "ready" if entry["ready"] else Text(logs.printable(str(entry["reason"])),
                                                style="red"))
    console.print(table)


@app.command("check")
def models_check(config: ConfigOption = None) -> None:
    """Check every model the pipelines use: in the repository, and ready on the backend."""
    from node.infer.backend import BackendUnavailable
    from node.infer.repository import ModelConfigError, ModelNotFound, load_model_spec
    from node.jobs.workers import make_backend

    settings = load(config)
    backend = make_backend(settings)
    names = sorted({p.model for p in settings.pipelines})
    if not names:
        errors.print("no pipelines configured: nothing to check")
    table = Table("model", "version", "backend", "state")
    failed = 0
    for name in names:
        try:
            spec = load_model_spec(settings.inference.model_repository, name)
            backend.check(spec)
            row(table, name, spec.version, backend.name, "ready")
        except (ModelNotFound, ModelConfigError, BackendUnavailable) as exc:
            failed += 1
            row(table, name, "-", backend.name, Text(logs.printable(str(exc)), style="red"))
    backend.close()
    console.print(table)
    if failed:
        raise typer.Exit(1)


@app.command("import")
def models_import(
    bundle: Annotated[Path, typer.Argument(help="A MONAI bundle: its directory or a zip.")],
    name: Annotated[str | None, typer.Option(help="Model name (default: the bundle's).")] = None,
    format_: Annotated[str, typer.Option(
        "--format", help="auto (the bundle's models/model.ts as is when it ships one, else "
        "onnx), onnx or torchscript (both run on both backends)."
    )] = "auto",
    codes: Annotated[Path | None, typer.Option(
        help="YAML: label -> {category, type, color}, for labels the built-in table lacks."
    )] = None,
    replace: Annotated[bool, typer.Option(help="Replace a model of the same name.")] = False,
    override: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE (VALUE as JSON), a bundle setting, e.g. displayable_configs#highres=false."
    )] = None,
    config: ConfigOption = None,
) -> None:
    """Import a MONAI bundle into the configuration's model repository."""
    # torch + MONAI: imported by this command only, never by `ainode serve`
    from node.bundles.export import PLATFORMS
    from node.bundles.importer import import_bundle
    from node.bundles.source import BundleRefused

    if format_ not in ("auto", *PLATFORMS):
        fail(f"--format must be auto or one of {', '.join(PLATFORMS)}", USAGE)
    overrides = {}
    for item in override or []:
        key, _, raw = item.partition("=")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw  # a plain string
    settings = load(config)
    try:
        report = import_bundle(bundle, settings.inference.model_repository, name, format_,
                               codes, replace, overrides)
    except BundleRefused as exc:
        fail(f"refused: {exc}")
    spec = report.spec
    for note in report.notes:
        errors.print(f"note: {note}", highlight=False, markup=False)
    console.print(
        f"imported {spec.name} version {spec.version} ({spec.platform}) into "
        f"{spec.model_file.parent.parent} in {report.seconds:.1f} s; labels: "
        f"{', '.join(spec.labels[1:])}; export checked (max relative difference "
        f"{report.export_difference:.1e})", highlight=False, markup=False,
    )


@app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="The model's name in the repository.")],
    contract: Annotated[Path, typer.Option(
        help="YAML: what the network expects and outputs, its labels and their codes.")],
    torchscript: Annotated[Path | None, typer.Option(help="A TorchScript file.")] = None,
    onnx: Annotated[Path | None, typer.Option(help="An ONNX file.")] = None,
    replace: Annotated[bool, typer.Option(help="Replace a model of the same name.")] = False,
    config: ConfigOption = None,
) -> None:
    """Add a network that is not a bundle (TorchScript or ONNX) with its contract."""
    from node.bundles.own import add_model
    from node.bundles.source import BundleRefused

    if torchscript is not None and onnx is None:
        fmt, network = "torchscript", torchscript
    elif onnx is not None and torchscript is None:
        fmt, network = "onnx", onnx
    else:
        fail("give exactly one of --torchscript FILE or --onnx FILE", USAGE)
    settings = load(config)
    try:
        report = add_model(name, network, fmt, contract, settings.inference.model_repository,
                           replace)
    except BundleRefused as exc:
        fail(f"refused: {exc}")
    spec = report.spec
    console.print(
        f"added {spec.name} version {spec.version} ({spec.platform}) to "
        f"{spec.model_file.parent.parent}; it ran on an example input (output "
        f"{report.output_shape}); findings: {', '.join(spec.findings)}",
        highlight=False, markup=False)
