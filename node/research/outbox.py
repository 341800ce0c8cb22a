"""A pipeline's ``research`` output as an outbox destination (``research:<entry>``): each item
names a series, exported with its study's identity (the study is looked up) and its results
when the entry includes them. Given to the sender as a :data:`~node.egress.targets.TargetFinder`
by the composition root."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from node.domain import Outcome
from node.egress.targets import Target, TargetFinder
from node.research.export import DestinationFailed, Exporter, ExportError
from node.settings import RESEARCH_PREFIX, Research, Settings
from node.store.jobs import JobStore
from node.store.outbox import OutboxItem


@dataclass(frozen=True)
class ResearchTarget:
    research: Research
    settings: Settings
    store: JobStore
    clock: Callable[[], float]

    @property
    def name(self) -> str:
        return self.research.name

    @property
    def where(self) -> str:
        research = self.research
        return str(research.path) if research.path else f"research peer {research.peer}"

    @property
    def address(self) -> str:
        return ""

    @property
    def identity(self) -> str:
        return self.research.name

    def send(self, items: list[OutboxItem]) -> dict[str, Outcome]:
        exporter = Exporter(self.settings, self.store, self.clock)
        outcomes: dict[str, Outcome] = {}
        for item in items:
            series_uid = item.sop_instance_uid
            study = [uid for kind, uid in self.store.series_objects(series_uid)
                     if kind == "study"]
            if not study:
                outcomes[item.path] = Outcome.dead("refused: the series is no longer kept")
                continue
            try:
                report = exporter.export(self.research.name, study, series_uid=series_uid)
            except ExportError as exc:
                outcomes[item.path] = Outcome.dead(f"refused: {exc}")
                continue
            except DestinationFailed as exc:
                outcomes[item.path] = exc.outcome
                continue
            problems = {**report.refused, **report.failed}
            outcomes[item.path] = (Outcome.sent() if not problems else Outcome.dead(
                "refused: " + "; ".join(problems.values())[:300]))
        return outcomes


def research_targets(store: JobStore, clock: Callable[[], float] = time.time) -> TargetFinder:
    """Finds ``research:<entry>`` destinations."""

    def find(settings: Settings, destination: str) -> Target | None:
        if not destination.startswith(RESEARCH_PREFIX):
            return None
        research = settings.research_destination(destination)
        return None if research is None else ResearchTarget(research, settings, store, clock)

    return find
