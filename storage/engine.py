"""Engine factory and transaction helpers.

``open_db(url) -> Engine`` opens a database (a file path or any SQLAlchemy URL) and brings its
schema up to date with the packaged Alembic migrations. ``session_scope(engine)`` is one write
transaction; ``read_session_scope(engine)`` is one read-only transaction, enforced by the database.

SQLite concurrency: pysqlite's own transaction handling issues a *deferred* ``BEGIN``; in WAL mode a
deferred transaction that read first and then writes fails at once with "database is locked" when
another writer committed meanwhile (the busy handler cannot help a stale snapshot). So we switch
pysqlite's handling off (``isolation_level=None``) and emit ``BEGIN IMMEDIATE`` ourselves, which
takes the write lock up front and waits for it (busy_timeout, then a short retry loop). Read-only
transactions use a deferred ``BEGIN`` plus ``PRAGMA query_only`` so they never block writers.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, exc, make_url
from sqlalchemy.orm import Session

from storage.errors import READONLY_OPTION, StorageError, display_url
from storage.migrate import ensure_schema

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long one SQLite statement waits for a lock before SQLITE_BUSY (per attempt)."""

BEGIN_RETRY_SECONDS = 120.0
"""Total time ``BEGIN IMMEDIATE`` keeps retrying on SQLITE_BUSY before the error surfaces."""


def normalize_url(db: str) -> str:
    """Accept a SQLAlchemy URL or a plain file path (``run.db`` -> ``sqlite:///run.db``)."""
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser()}"


def sqlite_file(db: str) -> Path | None:
    """The file a SQLite ``db`` (path or URL) names; None for other backends, in-memory or unparsable URLs."""
    try:
        url = make_url(normalize_url(db))
    except exc.ArgumentError:
        return None
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _is_busy(error: BaseException) -> bool:
    text = str(error).lower()
    return "database is locked" in text or "database is busy" in text


def _install_sqlite_transactions(engine: Engine) -> None:
    """WAL, foreign keys, busy timeout; BEGIN IMMEDIATE for writes, query_only for reads."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see module docstring)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across application crashes in WAL mode (only an OS crash can lose the
        # last commits) and makes each small commit much cheaper than FULL.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # exec_driver_sql inside the begin event is SQLAlchemy's documented recipe; it also wraps
        # driver errors into sqlalchemy.exc types that callers (and run_in_transaction) catch.
        if conn.get_execution_options().get(READONLY_OPTION):
            conn.exec_driver_sql("PRAGMA query_only=ON")
            conn.connection.info["query_only"] = True
            conn.exec_driver_sql("BEGIN")
            return
        deadline = time.monotonic() + BEGIN_RETRY_SECONDS
        while True:
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except exc.OperationalError as error:  # busy_timeout already waited once
                if not _is_busy(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_conn, record) -> None:  # noqa: ANN001
        # A pooled connection must not stay read-only for the next (writing) user.
        if record.info.pop("query_only", False) and dbapi_conn is not None:
            dbapi_conn.execute("PRAGMA query_only=OFF")


def _install_postgres_transactions(engine: Engine) -> None:
    """Map the read-only option onto ``SET TRANSACTION ... READ ONLY`` (enforced by the server).

    Read-only transactions also get REPEATABLE READ: one consistent snapshot for the whole read,
    as SQLite gives (a read-only transaction can never fail to serialize).
    """

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(READONLY_OPTION):
            # psycopg opens the transaction implicitly, so this is its first statement.
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_dumps(value: Any) -> str:
    """JSON for JSON columns: NaN/inf become null (PostgreSQL rejects the ``NaN`` token, so a
    skipped training step's ``grad/norm`` would otherwise abort the run; SQLite would store
    non-standard JSON)."""
    return json.dumps(_finite(value), allow_nan=False)


def create_db_engine(db: str) -> Engine:
    """Create an engine for ``db`` with our connection setup, without touching the schema."""
    url = normalize_url(db)
    try:
        engine = create_engine(url, json_serializer=json_dumps)
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError, ValueError) as error:
        raise StorageError(
            f"invalid database URL {display_url(url)!r}: {error}; "
            "give a file path or a SQLAlchemy URL like sqlite:///run.db or postgresql+psycopg://user@host/db"
        ) from None
    if engine.dialect.name == "sqlite":
        _install_sqlite_transactions(engine)
    elif engine.dialect.name == "postgresql":
        _install_postgres_transactions(engine)
    return engine


def open_db(db: str, *, upgrade: bool = True) -> Engine:
    """Open the database at ``db`` (a path or any SQLAlchemy URL) and migrate it to the head revision.

    Raises :class:`StorageError` (one line) for a bad URL, an unreachable server, a file that is
    not a database, or a schema newer than this code; the database is left unchanged then.
    """
    engine = create_db_engine(db)
    if upgrade:
        try:
            ensure_schema(engine)
        except BaseException:
            engine.dispose()
            raise
    return engine


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One write transaction: commit on success, roll back on error (BEGIN IMMEDIATE on SQLite).

    On SQLite it holds the database's write lock from start to end, so keep it short: do the slow
    work (LLM calls, sandbox runs) outside, then write its results in one scope. Never ``await``
    inside it: a second scope opened by another coroutine of the same thread would wait for a
    lock that the suspended first one can only release when the event loop gets back to it.
    """
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def read_session_scope(engine: Engine) -> Iterator[Session]:
    """One read-only transaction: any write raises (SQLite query_only, PostgreSQL READ ONLY)."""
    with engine.connect() as conn:
        conn.execution_options(**{READONLY_OPTION: True})
        with Session(bind=conn, expire_on_commit=False) as session:
            try:
                yield session
            finally:
                session.rollback()


_TRANSIENT_SQLSTATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected (PostgreSQL)


def is_transient(error: BaseException) -> bool:
    """True for conflicts that a retry of the whole transaction resolves (deadlock, busy, serialization)."""
    orig = getattr(error, "orig", error)
    return getattr(orig, "sqlstate", None) in _TRANSIENT_SQLSTATES or _is_busy(orig)


def run_in_transaction(engine: Engine, work: Callable[[Session], T], *, attempts: int = 5) -> T:
    """Run ``work(session)`` in one write transaction, re-running it on a transient conflict.

    Use it for transactions that touch rows other writers touch too (e.g. back-propagating into
    shared search nodes on PostgreSQL, where two writers can deadlock and the server aborts one).
    ``work`` must be safe to re-run: it sees a fresh session each attempt and its effects are rolled
    back on failure. The last error is raised after ``attempts`` tries.
    """
    for attempt in range(1, attempts + 1):
        try:
            with session_scope(engine) as session:
                return work(session)
        except exc.DBAPIError as error:
            if attempt == attempts or not is_transient(error):
                raise
            time.sleep(min(0.05 * 2**attempt, 1.0))
    raise AssertionError("unreachable")
