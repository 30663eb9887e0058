"""Engine factory and session helpers.

TEMPORARY bootstrap (issue 2 replaces ``create_all`` with Alembic migrations applied on open);
the public API below is the contract: ``open_db(url) -> Engine`` and ``session_scope(engine)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from storage.models import Base


def normalize_url(db: str) -> str:
    """Accept a SQLAlchemy URL or a plain file path (``run.db`` -> ``sqlite:///run.db``)."""
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser()}"


def open_db(db: str) -> Engine:
    """Open (and bring up to date) the database at ``db``: a path or any SQLAlchemy URL."""
    url = normalize_url(db)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    Base.metadata.create_all(engine)
    return engine


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error."""
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session, session.begin():
        yield session
