"""The job store's schema and its migrations, for both engines.

``ainode_schema`` holds the version; :func:`migrate` applies the missing migrations in order,
in one transaction under a lock (several nodes may start at once), and refuses a store whose
version is newer than :data:`VERSION`. Version 1 is the first release's schema (a store from
before versioning has its tables already and gains the columns added since); version 2 adds
what several receivers and senders on one store need; version 3 structured audit lines (for
DICOM audit messages), their forwarding state, the configuration digests and retention;
version 4 the peers changed while the node runs; version 5 the research exports' crosswalk;
version 6 withdrawn results (IHE IOCM rejection notes), deliveries that wait for others,
shadow runs' comparisons and the radiologists' verdicts on results.
"""

from __future__ import annotations

from collections.abc import Callable

from node.store.database import Connection, Database, SchemaTooNew

_BASE = """
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT NOT NULL,
    revision INTEGER NOT NULL,
    study_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    called_ae TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    body_part TEXT NOT NULL,
    series_description TEXT NOT NULL,
    image_type TEXT NOT NULL,
    slice_thickness {real},
    state TEXT NOT NULL,
    instance_count INTEGER NOT NULL DEFAULT 0,
    duplicate_count INTEGER NOT NULL DEFAULT 0,
    expected_count INTEGER,
    first_at {real} NOT NULL,
    last_at {real} NOT NULL,
    completed_at {real},
    completion_reason TEXT,
    route_state TEXT,
    route_detail TEXT,
    PRIMARY KEY (series_uid, revision)
);
CREATE INDEX IF NOT EXISTS series_state ON series (state, last_at);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    revision INTEGER NOT NULL,
    study_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    received_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid, revision);
CREATE TABLE IF NOT EXISTS jobs (
    id {serial_key},
    series_uid TEXT NOT NULL,
    revision INTEGER NOT NULL,
    pipeline TEXT NOT NULL,
    model TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before {real} NOT NULL,
    lease_until {real},
    error TEXT,
    result TEXT,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    UNIQUE (series_uid, revision, pipeline)
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (state, priority, not_before);
CREATE TABLE IF NOT EXISTS outbox (
    id {serial_key},
    job_id INTEGER,
    destination TEXT NOT NULL,
    path TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before {real} NOT NULL,
    error TEXT,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    UNIQUE (destination, sop_instance_uid)
);
CREATE TABLE IF NOT EXISTS audit (
    id {serial_key},
    at {real} NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
)
"""

# Columns added to version 1 before the schema was versioned: (table, column, declaration).
_V1_ADDED_COLUMNS = (
    ("jobs", "owner", "TEXT"),  # the claim token of the worker holding the lease
    ("jobs", "transient", "INTEGER NOT NULL DEFAULT 0"),  # attempts not counted: outages, stops
    ("jobs", "first_failed_at", "{real}"),  # start of the transient-failure window
    ("jobs", "superseded_by", "INTEGER"),  # the revision that replaced this job's series
    ("outbox", "first_failed_at", "{real}"),  # start of the delivery retry window
)

_V2 = """
ALTER TABLE outbox ADD COLUMN lease_until {real};
CREATE INDEX IF NOT EXISTS outbox_ready ON outbox (state, priority, not_before);
CREATE TABLE IF NOT EXISTS series_senders (
    series_uid TEXT NOT NULL,
    revision INTEGER NOT NULL,
    association TEXT NOT NULL,
    PRIMARY KEY (series_uid, revision, association)
)
"""


_V3 = """
ALTER TABLE audit ADD COLUMN address TEXT NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN objects TEXT NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN outcome INTEGER NOT NULL DEFAULT 0;
ALTER TABLE audit ADD COLUMN forwarded INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS audit_forwarding ON audit (forwarded, id);
ALTER TABLE series ADD COLUMN purged_at {real};
CREATE TABLE IF NOT EXISTS settings_digests (
    node_name TEXT NOT NULL,
    section TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (node_name, section)
)
"""


# peers added, changed or removed while the node runs (the admin API, `ainode peers`); they
# take precedence over the configuration file's peers of the same name (NULL: removed)
_V4 = """
CREATE TABLE IF NOT EXISTS peer_changes (
    name TEXT PRIMARY KEY,
    definition TEXT,
    updated_at {real} NOT NULL,
    updated_by TEXT NOT NULL
)
"""


def _statements(database: Database, script: str) -> list[str]:
    text = script.format(real=database.real, serial_key=database.serial_key)
    return [statement.strip() for statement in text.split(";") if statement.strip()]


def _version_1(database: Database, db: Connection) -> None:
    for statement in _statements(database, _BASE):
        db.execute(statement)
    for table, column, declaration in _V1_ADDED_COLUMNS:
        if column not in database.column_names(db, table):
            declaration = declaration.format(real=database.real)
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _script(script: str) -> Callable[[Database, Connection], None]:
    """A migration that runs each statement of ``script``."""
    def apply(database: Database, db: Connection) -> None:
        for statement in _statements(database, script):
            db.execute(statement)
    return apply


# research exports' pseudonyms, kept only where research[].crosswalk is on (authorised
# re-identification): one row per (project, kind, pseudonym)
_V5 = """
CREATE TABLE IF NOT EXISTS deid_crosswalk (
    project TEXT NOT NULL,
    kind TEXT NOT NULL,
    pseudonym TEXT NOT NULL,
    original TEXT NOT NULL,
    created_at {real} NOT NULL,
    PRIMARY KEY (project, kind, pseudonym)
)
"""


# a job's results withdrawn from the PACS (IHE IOCM): one row per job; ``replaced_by`` is the
# job of a newer revision whose results supersede them. An outbox row with ``after_job`` waits
# until that job's results have reached the same destination (new objects before the note).
# A shadow pipeline's result compared with its live pipeline's: one row per series revision.
_V6 = """
CREATE TABLE IF NOT EXISTS rejections (
    job_id INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    comment TEXT NOT NULL,
    actor TEXT NOT NULL,
    replaced_by INTEGER,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS rejections_state ON rejections (state);
ALTER TABLE outbox ADD COLUMN after_job INTEGER;
CREATE TABLE IF NOT EXISTS shadow_comparisons (
    series_uid TEXT NOT NULL,
    revision INTEGER NOT NULL,
    pipeline TEXT NOT NULL,
    live_pipeline TEXT NOT NULL,
    live_job INTEGER NOT NULL,
    shadow_job INTEGER NOT NULL,
    comparison TEXT NOT NULL,
    created_at {real} NOT NULL,
    PRIMARY KEY (series_uid, revision, pipeline)
);
CREATE INDEX IF NOT EXISTS shadow_by_pipeline ON shadow_comparisons (pipeline, created_at);
CREATE TABLE IF NOT EXISTS verdicts (
    id {serial_key},
    job_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    source TEXT NOT NULL,
    reference TEXT NOT NULL DEFAULT '',
    created_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS verdicts_by_job ON verdicts (job_id, id)
"""


MIGRATIONS: tuple[Callable[[Database, Connection], None], ...] = (
    _version_1, _script(_V2), _script(_V3), _script(_V4), _script(_V5), _script(_V6))
VERSION = len(MIGRATIONS)


def schema_version(db: Connection) -> int:
    row = db.execute("SELECT MAX(version) FROM ainode_schema").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate(database: Database, now: float) -> int:
    """Bring the store to :data:`VERSION`; returns the version it had. Raises
    :class:`SchemaTooNew` for a store written by a newer release."""
    with database.transaction() as db:
        database.lock(db, "ainode-schema")
        db.execute(
            "CREATE TABLE IF NOT EXISTS ainode_schema"
            f" (version INTEGER PRIMARY KEY, applied_at {database.real} NOT NULL)"
        )
        found = schema_version(db)
        if found > VERSION:
            raise SchemaTooNew(
                f"the job store at {database.location} has schema version {found}, newer than"
                f" this ainode knows ({VERSION}): upgrade ainode on this machine, or point it"
                " at another store (store.url)"
            )
        for version in range(found + 1, VERSION + 1):
            MIGRATIONS[version - 1](database, db)
            db.execute("INSERT INTO ainode_schema (version, applied_at) VALUES (?, ?)",
                       (version, now))
        return found
