"""The data directory (``node.data_dir``), spelled in one place: what lives where, and the job
store it holds (or the PostgreSQL one ``store.url`` names).

::

    <data_dir>/jobs.sqlite3           the job store (SQLite; unless store.url)
    <data_dir>/spool/<study>/<series>/<sop>.dcm   received instances (.tmp: partial writes)
    <data_dir>/results/<series>/<revision>/<pipeline>/   label maps and summaries of jobs
    <data_dir>/research/<entry>/      folder exports' keys, crosswalks
    <data_dir>/metrics/               prometheus-client's files, one set per role process
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from node.settings import Settings
from node.store.database import open_database
from node.store.jobs import JobStore
from node.store.spool import path_component

DB_FILE = "jobs.sqlite3"
SPOOL_DIR = "spool"
RESULTS_DIR = "results"
RESEARCH_DIR = "research"
METRICS_DIR = "metrics"


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def database(self) -> Path:
        return self.root / DB_FILE

    @property
    def spool(self) -> Path:
        return self.root / SPOOL_DIR

    @property
    def spool_temporaries(self) -> Path:
        return self.spool / ".tmp"

    @property
    def research(self) -> Path:
        return self.root / RESEARCH_DIR

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_DIR

    def results(self, series_uid: str) -> Path:
        """Every revision's results of one series."""
        return self.root / RESULTS_DIR / path_component(series_uid)


def data_dir(settings: Settings) -> DataDir:
    return DataDir(settings.node.data_dir)


def open_store(settings: Settings) -> JobStore:
    """The job store ``store.url`` names, or the SQLite file under ``node.data_dir``."""
    return JobStore(open_database(settings.store.url, data_dir(settings).database))


def store_exists(settings: Settings) -> bool:
    """Whether there is a job store to read (PostgreSQL is assumed to be there)."""
    return settings.store.url is not None or data_dir(settings).database.exists()
