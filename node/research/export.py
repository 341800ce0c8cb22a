"""Research export: the node's studies (and their AI results) de-identified to a research
destination (``research[]``): a folder, or a configured DICOM (C-STORE) or DICOMweb (STOW-RS)
peer. Used by ``ainode export`` and by a pipeline's ``research`` output (an outbox item).

Nothing is written before the key is loaded and every file of a study has been read: a
study with an image whose Burned In Annotation is YES is refused whole, with the reason.
Each file is de-identified with the same pseudonyms (:mod:`node.research.deidentify`), so a
SEG's and an SR's references resolve to the exported images; the node's Secondary Captures
(the overlay burned in) stay behind. The same key gives byte-identical files. Every export
is audited; the crosswalk (pseudonym -> original) is kept only when the entry asks for it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from node.domain import AuditEvent, Outcome
from node.research.deidentify import (
    BurnedInAnnotation,
    Profile,
    deidentify,
    patient_key,
    refuse_burned_in,
)
from node.research.pseudonym import KeyMissing, Pseudonyms, load_key
from node.settings import DEID_KEY_ENV, Research, Settings
from node.store.crosswalk import Crosswalk
from node.store.durable import write_atomically
from node.store.index import InstanceIndex
from node.store.jobs import JobStore
from node.store.layout import DataDir, data_dir
from node.store.outbox import RESULT_KINDS as RESULT_KINDS_ON_DISK
from node.store.spool import path_component

log = logging.getLogger(__name__)

RESULT_KINDS = ("seg", "sr")  # the node's results that go along; its SC has text burned in


class ExportError(Exception):
    """The export cannot start (no key, unknown destination): nothing was written."""


class DestinationFailed(Exception):
    """The destination did not take the files; ``outcome`` says whether to retry."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


@dataclass
class ExportReport:
    """What one export did, per original study UID."""

    destination: str
    exported: dict[str, str] = field(default_factory=dict)  # study -> its pseudonym
    refused: dict[str, str] = field(default_factory=dict)  # study -> why
    failed: dict[str, str] = field(default_factory=dict)  # file or study -> why
    left_out: list[str] = field(default_factory=list)  # e.g. the node's SC
    files: int = 0

    @property
    def ok(self) -> bool:
        return not self.refused and not self.failed


@dataclass(frozen=True)
class _Source:
    path: Path
    kind: str  # image, seg, sr, sc


def study_sources(store: JobStore, data_dir: Path, study_uid: str, include_results: bool,
                  series_uid: str | None = None) -> list[_Source]:
    """The study's kept instances (one series when ``series_uid``) and, with
    ``include_results``, the node's newest results for each of its series."""
    rows = InstanceIndex(store).of_study(study_uid)
    if series_uid is not None:
        rows = [r for r in rows if r[1] == series_uid]
    sources = [_Source(Path(r[0]), "image") for r in rows]
    if include_results:
        for series in sorted({r[1] for r in rows}):
            sources.extend(_results(data_dir, series))
    return sources


def _results(data_dir: Path, series_uid: str) -> list[_Source]:
    folder = DataDir(data_dir).results(series_uid)
    revisions = sorted((p for p in folder.glob("*") if p.name.isdigit()),
                       key=lambda p: int(p.name))
    if not revisions:
        return []
    return [_Source(path, path.stem) for path in sorted(revisions[-1].glob("*/*.dcm"))
            if path.stem in RESULT_KINDS_ON_DISK]


class Exporter:
    def __init__(self, settings: Settings, store: JobStore, clock: Callable[[], float],
                 environ: dict[str, str] | None = None) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._environ = environ

    def export(self, name: str, study_uids: list[str], profile: str | None = None,
               actor: str = "node", series_uid: str | None = None,
               on_progress: Callable[[str], None] | None = None,
               address: str = "") -> ExportReport:
        """Export ``study_uids`` (one series of the first when ``series_uid``) to the research
        entry ``name``; raises :class:`ExportError` before writing anything when it cannot
        start, :class:`DestinationFailed` when a peer did not take the files."""
        research = self._settings.research_destination(name)
        if research is None:
            known = ", ".join(r.name for r in self._settings.research) or "none"
            raise ExportError(f"no research entry named {name!r} (known: {known})")
        try:
            options = research.all_options(profile)
        except KeyError as exc:
            raise ExportError(f"no profile named {profile!r}") from exc
        try:
            key = load_key(research.key_file, self._environ, DEID_KEY_ENV)
        except KeyMissing as exc:
            raise ExportError(str(exc)) from exc
        if research.include_results and "clean_structured_content" not in options:
            raise ExportError("include_results needs the option clean_structured_content")
        pseudonyms = Pseudonyms(key)
        deid = Profile(options, tuple(research.keep_private))
        report = ExportReport(research.name)
        with tempfile.TemporaryDirectory(prefix="export-", dir=self._staging_root()) as staging:
            written: list[Path] = []
            for study_uid in study_uids:
                files = self._study(research, study_uid, series_uid, deid, pseudonyms,
                                    Path(staging), report)
                written.extend(files)
                if on_progress is not None:
                    on_progress(study_uid)
            if research.path is None and written:
                self._send(research, written)
        self._audit(research, report, actor, address)
        return report

    def _staging_root(self) -> Path:
        root = data_dir(self._settings).research
        root.mkdir(parents=True, exist_ok=True)
        return root

    def _study(self, research: Research, study_uid: str, series_uid: str | None,
               profile: Profile, pseudonyms: Pseudonyms, staging: Path,
               report: ExportReport) -> list[Path]:
        sources = study_sources(self._store, self._settings.node.data_dir, study_uid,
                                research.include_results, series_uid)
        if not any(s.kind == "image" for s in sources):
            report.failed[study_uid] = "the node keeps no instances of this study"
            return []
        datasets: list[tuple[_Source, Dataset]] = []
        dataset: Dataset
        for source in sources:
            try:
                dataset = pydicom.dcmread(source.path)
            except (OSError, InvalidDicomError, ValueError) as exc:
                report.failed[source.path.name] = f"not readable: {exc.__class__.__name__}"
                continue
            if source.kind == "image":
                try:
                    refuse_burned_in(dataset)
                except BurnedInAnnotation as exc:
                    report.refused[study_uid] = f"{source.path.name}: {exc}"
                    return []  # the whole study stays behind, nothing written
            elif source.kind not in RESULT_KINDS:
                report.left_out.append(f"{source.kind} result of study {study_uid}: the "
                                       "overlay and its text are burned into the pixels")
                continue
            datasets.append((source, dataset))
        root = research.path if research.path is not None else staging
        originals = _originals(pseudonyms, study_uid, [d for _, d in datasets])
        written = []
        for source, dataset in datasets:
            try:
                target = self._write(root, deidentify(dataset, profile, pseudonyms))
            except Exception as exc:  # one file's defect never stops the others
                log.warning("research export: %s not exported (%s)", source.kind,
                            exc.__class__.__name__)
                report.failed[source.path.name] = f"not exported: {exc.__class__.__name__}"
                continue
            written.append(target)
            report.files += 1
        if written:
            report.exported[study_uid] = pseudonyms.uid(study_uid)
            self._crosswalk(research, originals)
        return written

    @staticmethod
    def _write(root: Path, dataset: Dataset) -> Path:
        """``root/STUDY/SERIES/SOP.dcm`` under the pseudonyms (UIDs kept by retain_uids as
        safe names only), written atomically."""
        target = (root / path_component(str(dataset.StudyInstanceUID))
                  / path_component(str(dataset.SeriesInstanceUID))
                  / f"{path_component(str(dataset.SOPInstanceUID))}.dcm")
        target.parent.mkdir(parents=True, exist_ok=True)
        _even_fragments(dataset)
        write_atomically(target, lambda handle: dataset.save_as(handle, enforce_file_format=True))
        return target

    def _send(self, research: Research, paths: list[Path]) -> None:
        from node.egress.targets import PeerTarget

        peer = self._settings.peer_by_name(research.peer or "")
        if peer is None:
            raise DestinationFailed(Outcome.dead(f"refused: no peer named {research.peer!r}"))
        outcomes = PeerTarget(peer, self._settings).send_files(paths)
        failed = [o for o in outcomes.values() if o.verdict != "sent"]
        missing = len(paths) - len(outcomes)
        if len(failed) == len(paths) and all(o.verdict == failed[0].verdict for o in failed):
            raise DestinationFailed(failed[0])  # the peer refused, or is down: as it said
        if failed or missing:
            first = failed[0].reason if failed else "no outcome"
            raise DestinationFailed(Outcome.retry(
                f"{len(failed) + missing} of {len(paths)} file(s) not taken by {peer.name}: "
                f"{first}"))

    def _crosswalk(self, research: Research, rows: set[tuple[str, str, str]]) -> None:
        if not research.crosswalk:
            return
        Crosswalk(self._store).record(research.name, rows, self._clock())

    def _audit(self, research: Research, report: ExportReport, actor: str, address: str
               ) -> None:
        where = str(research.path) if research.path is not None else f"peer {research.peer}"
        detail = (f"{len(report.exported)} study(ies), {report.files} file(s) to research "
                  f"{research.name} ({where}); {len(report.refused)} refused, "
                  f"{len(report.failed)} failed")
        studies = [*report.exported, *report.refused]
        self._store.audit(actor, AuditEvent.RESEARCH_EXPORT, detail, self._clock(), address=address,
                          objects=[("study", uid) for uid in studies],
                          outcome=0 if report.ok else 4)

    def reidentify(self, name: str, pseudonym: str, actor: str) -> list[tuple[str, str]]:
        """(kind, original) for a pseudonym of research entry ``name``; audited."""
        rows = Crosswalk(self._store).lookup(name, pseudonym)
        self._store.audit(actor, AuditEvent.REIDENTIFICATION,
                          f"research {name}: {len(rows)} original(s) looked up", self._clock(),
                          outcome=0 if rows else 4)
        return rows


def _even_fragments(dataset: Dataset) -> None:
    """Compressed pixel data whose last fragment has an odd length (against PS3.5 A.4; two
    of the shared files) gets its padding byte inside that fragment: written as it is, the
    writer's padding would land after the fragment and break the encapsulation."""
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or not syntax.is_encapsulated or "PixelData" not in dataset:
        return
    value = bytes(dataset.PixelData)
    if len(value) % 2 == 0:
        return
    items, position = [], 0  # the Basic Offset Table, then the fragments (PS3.5 A.4)
    while position + 8 <= len(value) and value[position:position + 4] == _ITEM:
        length = int.from_bytes(value[position + 4:position + 8], "little")
        items.append(value[position + 8:position + 8 + length])
        position += 8 + length
    if position != len(value):
        return  # not items through to the end: left as it is
    dataset.PixelData = b"".join(
        _ITEM + (len(item) + len(item) % 2).to_bytes(4, "little") + item + b"\0" * (len(item) % 2)
        for item in items)


_ITEM = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian


def _originals(pseudonyms: Pseudonyms, study_uid: str, datasets: list[Dataset]
               ) -> set[tuple[str, str, str]]:
    """(kind, pseudonym, original) of the study, its patient(s) and series."""
    rows = {("study", pseudonyms.uid(study_uid), study_uid)}
    for dataset in datasets:
        rows.add(("patient", pseudonyms.patient(patient_key(dataset)),
                  str(dataset.get("PatientID", "") or "")))
        series = str(dataset.get("SeriesInstanceUID", ""))
        rows.add(("series", pseudonyms.uid(series), series))
    return rows
