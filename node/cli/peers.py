"""``ainode peers``: AE titles and peers changed live (kept in the job store; a running node
uses them at its next association, no restart). Every change is audited."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from node.cli.console import (
    USAGE,
    ConfigOption,
    console,
    fail,
    load,
    open_or_create_store,
    operator,
    row,
    when,
)
from node.cli.transfer import echo_peer

if TYPE_CHECKING:
    from node.operations.peers import PeerDirectory
    from node.store.jobs import JobStore

app = typer.Typer(
    help="AE titles and peers, changed live (kept in the job store; a running node uses them "
    "at its next association, no restart).", no_args_is_help=True)


def _directory(config: Path | None) -> tuple[JobStore, PeerDirectory]:
    from node.operations.peers import PeerDirectory

    settings = load(config)
    store = open_or_create_store(settings)
    return store, PeerDirectory(settings, store)


@app.command("list")
def peers_list(config: ConfigOption = None) -> None:
    """Peers in effect: from the configuration file, or changed live."""
    store, directory = _directory(config)
    try:
        entries = directory.entries()
    finally:
        store.close()
    table = Table("name", "AE title", "host", "port", "DICOMweb", "results", "TLS", "source",
                  "changed")
    for entry in entries:
        peer = entry.peer
        row(table, peer.name, peer.ae_title, peer.host, str(peer.port),
                      peer.dicomweb_url or "-", ",".join(peer.results or []) or "all",
                      "yes" if peer.tls else "no", entry.source,
                      f"{when(entry.updated_at)} by {entry.updated_by}"
                      if entry.updated_at else "-")
    console.print(table)


@app.command("add")
def peers_add(
    name: Annotated[str, typer.Argument(help="The peer's name (pipelines' destinations).")],
    ae_title: Annotated[str, typer.Option("--ae-title", help="Its AE title.")],
    host: Annotated[str, typer.Option(help="Host name or address.")],
    port: Annotated[int, typer.Option(help="DICOM port.")],
    dicomweb_url: Annotated[str | None, typer.Option(help="Results by STOW-RS here.")] = None,
    results: Annotated[str | None, typer.Option(help="Kinds it wants: seg,sr,sc.")] = None,
    calling_from: Annotated[list[str] | None, typer.Option(
        "--from", help="Addresses or networks it may call from (repeatable).")] = None,
    tls: Annotated[bool, typer.Option(help="C-STORE / C-ECHO to it over DICOM TLS.")] = False,
    config: ConfigOption = None,
) -> None:
    """Add or change a peer (validated like the configuration file; audited)."""
    definition: dict[str, object] = {"name": name, "ae_title": ae_title, "host": host,
                                     "port": port, "tls": tls}
    if dicomweb_url:
        definition["dicomweb_url"] = dicomweb_url
    if results:
        definition["results"] = [kind.strip() for kind in results.split(",") if kind.strip()]
    if calling_from:
        definition["hosts"] = calling_from
    from node.operations.peers import PeerChangeRefused

    store, directory = _directory(config)
    try:
        peer, created = directory.put(definition, operator().name)
    except PeerChangeRefused as exc:
        fail(str(exc), USAGE)
    finally:
        store.close()
    console.print(f"{'added' if created else 'changed'} {peer.name}: "
                  f"{peer.ae_title}@{peer.host}:{peer.port}")


@app.command("remove")
def peers_remove(name: Annotated[str, typer.Argument()], config: ConfigOption = None) -> None:
    """Remove a peer (refused while a pipeline sends results to it; audited)."""
    from node.operations.peers import PeerChangeRefused

    store, directory = _directory(config)
    try:
        directory.remove(name, operator().name)
    except KeyError:
        fail(f"no peer named {name!r}")
    except PeerChangeRefused as exc:
        fail(str(exc), USAGE)
    finally:
        store.close()
    console.print(f"removed {name}")


@app.command("reset")
def peers_reset(name: Annotated[str, typer.Argument()], config: ConfigOption = None) -> None:
    """Forget the live change to a peer: the configuration file's entry applies again."""
    store, directory = _directory(config)
    try:
        found = directory.reset(name, operator().name)
    finally:
        store.close()
    if not found:
        fail(f"peer {name!r} has no live change")
    console.print(f"{name}: back to the configuration file")


@app.command("echo")
def peers_echo(name: Annotated[str, typer.Argument()], config: ConfigOption = None) -> None:
    """C-ECHO a peer in effect (also one added live)."""
    store, directory = _directory(config)
    try:
        settings = directory.settings()
    finally:
        store.close()
    echo_peer(settings, name)
