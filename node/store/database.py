"""The job store's database engines: SQLite (embedded default) and PostgreSQL (several nodes).

Both run the same SQL, written for SQLite (``?`` placeholders, ``ON CONFLICT``); what differs
is behind :class:`Database`: how a transaction is opened and serialised, row claiming
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL, one writer at a time on SQLite), and how other
processes are woken when work appears (``LISTEN/NOTIFY`` on PostgreSQL; SQLite's
``data_version`` on a cheap 0.2 s watch, since SQLite has no notifications).

The schema is versioned (:data:`node.store.schema.MIGRATIONS`): migrations run at open, under
a lock, and a store whose schema is newer than this release knows is refused
(:class:`SchemaTooNew`), so an old node never writes rows it does not understand.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, cast

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0  # how long a caller waits for a pooled PostgreSQL connection
FAIL_FAST_S = 1.0  # after such a wait failed, callers fail at once for this long
_NOTIFY_PREFIX = "ainode_"


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What the store's SQL needs of a connection (an ``sqlite3.Connection`` is one)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...


class SchemaTooNew(RuntimeError):
    """The store was written by a newer ainode; this one must not touch it."""


class StoreUnavailable(RuntimeError):
    """The database cannot be reached (PostgreSQL down or restarting)."""


class Database(ABC):
    """One job store database: transactions, per-key serialisation, notifications."""

    dialect: str
    #: appended to a ``SELECT`` that claims rows, so concurrent claimers skip each other's
    skip_locked: str = ""
    #: the column type of a float (SQLite's REAL is 8 bytes; PostgreSQL's is 4)
    real: str = "REAL"
    #: an auto-numbered primary key column
    serial_key: str = "INTEGER PRIMARY KEY AUTOINCREMENT"
    #: where it is, without a password, for messages
    location: str = ""

    @abstractmethod
    def transaction(self) -> Any:
        """Context manager: a write transaction, committed at exit, rolled back on error."""

    @abstractmethod
    def reading(self) -> Any:
        """Context manager: a connection for reads."""

    @abstractmethod
    def lock(self, db: Connection, key: str) -> None:
        """Serialise transactions on ``key`` (e.g. a series) until this one ends."""

    @abstractmethod
    def notify(self, db: Connection, channel: str) -> None:
        """Wake listeners of ``channel`` when this transaction commits."""

    @abstractmethod
    def column_names(self, db: Connection, table: str) -> set[str]: ...

    @abstractmethod
    def watch(self, wakes: dict[str, threading.Event]) -> None:
        """Set ``wakes[channel]`` whenever another process may have queued work there."""

    @abstractmethod
    def close(self) -> None: ...


class SQLiteDatabase(Database):
    """One connection, one lock per process (WAL: several processes may share the file)."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.location = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives any process crash; the spool + reconcile cover power loss.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._stopping = threading.Event()

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        with self._lock:
            yield cast(Connection, self._db)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """BEGIN IMMEDIATE ... COMMIT: one writer at a time, across processes too."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield cast(Connection, self._db)
                self._db.execute("COMMIT")
            except BaseException:
                # also when COMMIT itself fails (disk full, I/O error): SQLite then keeps the
                # transaction open, and every later BEGIN on this connection would fail
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def lock(self, db: Connection, key: str) -> None:
        """Nothing to do: an IMMEDIATE transaction already excludes every other writer."""

    def notify(self, db: Connection, channel: str) -> None:
        """Nothing to do: :meth:`watch` sees every commit through ``data_version``."""

    def column_names(self, db: Connection, table: str) -> set[str]:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})").fetchall()}

    def watch(self, wakes: dict[str, threading.Event], interval_s: float = 0.05) -> None:
        """A thread with its own connection: ``PRAGMA data_version`` changes when another
        connection commits; then every channel is woken (the woken loops find their work).
        Every channel is also woken once as the watch begins."""

        def run() -> None:
            watcher = sqlite3.connect(self.path, check_same_thread=False)
            try:
                seen = watcher.execute("PRAGMA data_version").fetchone()[0]
                for event in wakes.values():  # work queued before the watch began
                    event.set()
                while not self._stopping.wait(interval_s):
                    version = watcher.execute("PRAGMA data_version").fetchone()[0]
                    if version != seen:
                        seen = version
                        for event in wakes.values():
                            event.set()
            except sqlite3.Error as exc:  # the store closed under it
                log.debug("store watch ended: %s", exc)
            finally:
                watcher.close()

        threading.Thread(target=run, name="store-watch", daemon=True).start()

    def close(self) -> None:
        self._stopping.set()
        with self._lock:
            self._db.close()


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


class _PostgresConnection:
    """A psycopg connection speaking the store's SQLite-style SQL (``?`` placeholders)."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        return self._connection.execute(  # type: ignore[no-any-return]
            self._sql(sql), [_plain(p) for p in parameters] or None
        )

    def executemany(self, sql: str, parameters: Any) -> Any:
        with self._connection.cursor() as cursor:
            cursor.executemany(self._sql(sql), [[_plain(p) for p in row] for row in parameters])
            return cursor


class PostgresDatabase(Database):
    """psycopg 3 with a connection pool; claims with ``FOR UPDATE SKIP LOCKED``, wakes with
    ``LISTEN/NOTIFY``. A connection lost (PostgreSQL restarted) fails the transaction under
    way with :class:`StoreUnavailable`; the pool opens fresh connections for the next ones."""

    dialect = "postgresql"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    real = "DOUBLE PRECISION"
    serial_key = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self._psycopg = psycopg
        self.url = url
        self.location = _without_password(url)
        self._stopping = threading.Event()
        self._unavailable: tuple[float, str] | None = None  # (until, why): fail fast meanwhile
        self._pool = ConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, timeout=CONNECT_TIMEOUT_S,
            check=ConnectionPool.check_connection, name="ainode-store",
            # an instance is acknowledged once its row is committed: the commit must be
            # durable whatever the server's default says
            kwargs={"application_name": "ainode", "options": "-c synchronous_commit=on"},
        )
        try:
            self._pool.open(wait=True, timeout=10)
        except Exception as exc:
            self._pool.close()
            raise StoreUnavailable(f"cannot connect to the job store at {self.location}: "
                                   f"{exc}") from exc

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection. While the server is unreachable, callers fail at once for
        :data:`FAIL_FAST_S` after each failed wait (a receiver answers every C-STORE then
        with 0xA700 in milliseconds instead of each waiting for the pool's timeout)."""
        psycopg = self._psycopg
        from psycopg_pool import PoolTimeout

        unavailable = self._unavailable
        if unavailable is not None and time.monotonic() < unavailable[0]:
            raise StoreUnavailable(unavailable[1])
        try:
            with self._pool.connection() as connection:
                yield connection
        except (psycopg.OperationalError, PoolTimeout) as exc:
            why = f"job store unavailable ({self.location}): {str(exc).strip()[:200]}"
            self._unavailable = (time.monotonic() + FAIL_FAST_S, why)
            raise StoreUnavailable(why) from exc
        self._unavailable = None

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self._connection() as connection, connection.transaction():
            yield _PostgresConnection(connection)

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        with self._connection() as connection:
            yield _PostgresConnection(connection)

    def lock(self, db: Connection, key: str) -> None:
        db.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (key,))

    def notify(self, db: Connection, channel: str) -> None:
        db.execute("SELECT pg_notify(?, '')", (_NOTIFY_PREFIX + channel,))

    def column_names(self, db: Connection, table: str) -> set[str]:
        rows = db.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name=?",
            (table,),
        ).fetchall()
        return {row[0] for row in rows}

    def watch(self, wakes: dict[str, threading.Event]) -> None:
        """A thread on its own connection: LISTEN on each channel and set its event on a
        NOTIFY. After a lost connection it reconnects (with a growing pause) and wakes every
        channel once, for notifications missed meanwhile."""
        psycopg = self._psycopg

        def run() -> None:
            pause = 0.5
            while not self._stopping.is_set():
                try:
                    with psycopg.connect(self.url, autocommit=True) as connection:
                        for channel in wakes:
                            connection.execute(f"LISTEN {_NOTIFY_PREFIX}{channel}")
                        for event in wakes.values():
                            event.set()
                        pause = 0.5
                        while not self._stopping.is_set():
                            for notice in connection.notifies(timeout=1.0):
                                woken = wakes.get(notice.channel.removeprefix(_NOTIFY_PREFIX))
                                if woken is not None:
                                    woken.set()
                except psycopg.Error as exc:
                    log.warning("job store notifications lost (%s); reconnecting in %.1f s",
                                str(exc).strip()[:120], pause)
                    self._stopping.wait(pause)
                    pause = min(pause * 2, 10.0)

        threading.Thread(target=run, name="store-listen", daemon=True).start()

    def close(self) -> None:
        self._stopping.set()
        self._pool.close()


def _without_password(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user@host/db`` for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, location = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':', 1)[0]}@{location}"


def open_database(url: str | None, default_sqlite: Path) -> Database:
    """PostgreSQL for a ``postgresql://`` URL, else SQLite (``sqlite:///path`` or the
    default file)."""
    if url and url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url)
    if url and url.startswith("sqlite:///"):
        return SQLiteDatabase(Path(url.removeprefix("sqlite://")))
    if url:
        raise ValueError(f"store.url must start with postgresql:// or sqlite:///, not {url!r}")
    return SQLiteDatabase(default_sqlite)
