"""What the web role's routes share: settings, the job store, the peers in effect, STOW-RS."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from node.ingest.intake import Intake
from node.ingest.stow import StowReceiver
from node.operations.actions import Actions
from node.operations.peers import PeerDirectory
from node.settings import Settings
from node.store.jobs import JobStore


@dataclass
class WebContext:
    settings: Settings
    store: JobStore
    peers: PeerDirectory
    stow: StowReceiver | None = None
    intake: Intake | None = None  # retrieved studies (on demand) are kept through it
    clock: Callable[[], float] = field(default=time.time)

    @property
    def actions(self) -> Actions:
        return Actions(self.store, self.clock)
