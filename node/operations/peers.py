"""The peers in effect: the configuration file's, changed while the node runs.

IT adds, changes and removes peers (AE titles, hosts, ports) through the admin API or
``ainode peers``; each change is validated like the configuration file, kept in the job store
(``peer_changes``), audited, and seen by every role process at its next association, delivery
or job, with no restart. Precedence: a peer changed or removed that way overrides the file's
peer of the same name until ``ainode peers reset NAME``; peers the file adds later, or file
edits to peers never changed live, apply at the next start as before.

Secrets are not kept in the job store: a live peer names them with ``password_env`` /
``token_env``, a variable whose name starts with ``AINODE_PEER_``; files (``*_file``,
``tls_ca``) are named only in the configuration file, so a caller of the API cannot have the
node read one of its files or variables and send it to a peer of the caller's choosing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from node.domain import AuditEvent
from node.settings import Peer, Settings
from node.store.jobs import JobStore
from node.store.peer_changes import ChangeAudit, PeerChanges

log = logging.getLogger(__name__)

PLAIN_SECRETS = ("password", "token")
FILE_FIELDS = ("password_file", "token_file", "tls_ca")
ENV_FIELDS = ("password_env", "token_env")
LIVE_SECRET_PREFIX = "AINODE_PEER_"  # noqa: S105 - a prefix of variable names


class PeerChangeRefused(ValueError):
    """A change that would leave the configuration invalid; the message names the key."""


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """A peer in effect and where it comes from (``file`` or ``live``)."""

    peer: Peer
    source: str
    updated_at: float | None = None
    updated_by: str | None = None


def peer_fields(peer: Peer) -> dict[str, Any]:
    """A peer as the API shows it: secrets never, only whether one is set."""
    shown = peer.model_dump(mode="json", exclude={"password", "token"}, exclude_none=True)
    shown["has_password"] = peer.password is not None
    shown["has_token"] = peer.token is not None
    return shown


def validate_peer(definition: Mapping[str, Any], name: str | None = None) -> Peer:
    """A peer from an API body, or :class:`PeerChangeRefused` naming each bad key."""
    if name is not None and definition.get("name", name) != name:
        raise PeerChangeRefused(f"peers.{name}.name: the body names {definition['name']!r}")
    label = name or definition.get("name") or "?"
    plain = [key for key in PLAIN_SECRETS if definition.get(key)]
    if plain:
        raise PeerChangeRefused(
            f"peers.{label}.{plain[0]}: secrets are not kept in the job store; give "
            f"{plain[0]}_env, the name of a variable {LIVE_SECRET_PREFIX}... set for the node")
    # a live change may not point the node's own files or variables at a peer it names (a
    # password_file of /etc/shadow sent to a DICOMweb URL of the caller's choosing)
    for key in FILE_FIELDS:
        if definition.get(key):
            raise PeerChangeRefused(f"peers.{label}.{key}: files are named in the configuration "
                                    "file only, not in a live change")
    for key in ENV_FIELDS:
        variable = definition.get(key)
        if variable and not str(variable).startswith(LIVE_SECRET_PREFIX):
            raise PeerChangeRefused(f"peers.{label}.{key}: a live peer's secret comes from a "
                                    f"variable whose name starts with {LIVE_SECRET_PREFIX}")
    try:
        return Peer.model_validate({**definition, **({"name": name} if name else {})})
    except ValidationError as exc:
        raise PeerChangeRefused("; ".join(
            f"peers.{label}.{'.'.join(str(p) for p in item['loc']) or '(peer)'}: {item['msg']}"
            for item in exc.errors())) from exc


class PeerDirectory:
    """The effective peers for one process, re-read from the store when they changed."""

    def __init__(self, settings: Settings, store: JobStore,
                 clock: Callable[[], float] = time.time) -> None:
        self._file = settings
        self._changes = PeerChanges(store)
        self._clock = clock
        self._lock = threading.Lock()
        self._signature: tuple[object, ...] | None = None
        self._entries: list[PeerEntry] = [PeerEntry(p, "file") for p in settings.peers]
        self._settings = settings
        self._last_warning = -1e9

    # -- reading ---------------------------------------------------------------------------
    def _refresh(self) -> None:
        signature = self._changes.signature()
        if signature == self._signature:
            return
        entries = {p.name: PeerEntry(p, "file") for p in self._file.peers}
        for change in self._changes.all():
            name, definition = change.name, change.definition
            if definition is None:
                entries.pop(name, None)
                continue
            try:
                peer = Peer.model_validate(json.loads(definition))
            except (ValidationError, ValueError) as exc:  # e.g. its password_env unset here
                log.error("peer %s as changed live cannot be used in this process: %s", name,
                          exc)
                entries.pop(name, None)
                continue
            entries[name] = PeerEntry(peer, "live", change.updated_at, change.updated_by)
        self._entries = list(entries.values())
        self._settings = self._file.model_copy(update={"peers": [e.peer for e in self._entries]})
        self._signature = signature

    def _refresh_or_keep(self) -> None:
        """Refresh; while the store cannot be read, keep the peers last read (an association
        is still answered, from what was known, rather than failing with the store)."""
        try:
            self._refresh()
        except Exception as exc:
            now = time.monotonic()
            if now - self._last_warning > 60:
                self._last_warning = now
                log.warning("peers changed live cannot be read now (%s); using those read "
                            "before", exc.__class__.__name__)

    def settings(self) -> Settings:
        """The configuration with the peers in effect now (never raises)."""
        with self._lock:
            self._refresh_or_keep()
            return self._settings

    def entries(self) -> list[PeerEntry]:
        with self._lock:
            self._refresh_or_keep()
            return list(self._entries)

    # -- changing --------------------------------------------------------------------------
    def put(self, definition: Mapping[str, Any], actor: str, address: str = "",
            name: str | None = None) -> tuple[Peer, bool]:
        """Add or replace a peer; returns it and whether it is new. Audited."""
        peer = validate_peer(definition, name)
        current = {e.peer.name: e for e in self.entries()}
        created = peer.name not in current
        stored = peer.model_dump(mode="json", exclude_none=True,
                                 exclude={"password", "token"})
        self._changes.put(peer.name, json.dumps(stored), actor, self._clock(), ChangeAudit(
            AuditEvent.PEER_ADDED if created else AuditEvent.PEER_CHANGED,
            f"{peer.name}: {peer.ae_title}@{peer.host}:{peer.port}", address,
            [("peer", peer.ae_title)]))
        return peer, created

    def remove(self, name: str, actor: str, address: str = "") -> Peer:
        """Remove a peer (``KeyError`` if there is none); refused while a pipeline sends to
        it. Audited."""
        current = {e.peer.name: e for e in self.entries()}
        if name not in current:
            raise KeyError(name)
        users = [p.name for p in self._file.pipelines if name in p.destinations]
        if users:
            raise PeerChangeRefused(
                f"peers.{name}: pipelines {', '.join(users)} send results to it (change "
                "their destinations in the configuration file first)")
        self._changes.put(name, None, actor, self._clock(), ChangeAudit(
            AuditEvent.PEER_REMOVED, name, address, [("peer", current[name].peer.ae_title)]))
        return current[name].peer

    def reset(self, name: str, actor: str, address: str = "") -> bool:
        """Forget the live change to ``name``: the file's peer (if any) applies again."""
        return self._changes.forget(name, actor, self._clock(), ChangeAudit(
            AuditEvent.PEER_RESET, f"{name}: back to the configuration file", address))
