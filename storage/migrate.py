"""Apply the packaged Alembic migrations (no alembic.ini needed at runtime).

The cheap path matters: ``open_db`` runs on every command and in every test, so we read the stored
revision with one query and only start Alembic when it differs from the head.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, exc, inspect, text

from storage.errors import READONLY_OPTION, StorageError, describe_db_error

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
"""The Alembic script location shipped inside the package."""

VERSION_TABLE = "alembic_version"
"""Alembic's bookkeeping table (one row: the schema revision)."""

_PG_MIGRATION_LOCK = 0x5746524C  # "WFRL": advisory lock id that serialises concurrent migrations


def alembic_config(connection: Connection | None = None, script_location: Path = MIGRATIONS_DIR) -> Config:
    """An Alembic Config pointing at the packaged migrations, optionally bound to ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this code knows."""
    head = _script().get_current_head()
    assert head is not None, "no migrations packaged"
    return head


def known_revisions() -> set[str]:
    """Every revision id shipped with this code."""
    return {rev.revision for rev in _script().walk_revisions()}


def current_revision(conn: Connection) -> str | None:
    """The revision stored in the database, or None for an empty/unversioned one."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    row = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).first()
    return row[0] if row else None


def _check_known(revision: str | None, url: str) -> None:
    if revision is not None and revision not in known_revisions():
        raise StorageError(
            f"database {url} has schema revision {revision!r}, newer than this workflow-rl "
            f"(knows up to {head_revision()!r}); upgrade workflow-rl (pip install -U workflow-rl)"
        )


def _probe(engine: Engine) -> str | None:
    """Read the stored revision (read-only, cheap); turn driver failures into one-line errors."""
    try:
        with engine.connect() as conn:
            conn.execution_options(**{READONLY_OPTION: True})  # never take the write lock to look
            if engine.dialect.name == "sqlite":
                # Touch the file header first so a non-database file fails here, not mid-migration.
                conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()
            return current_revision(conn)
    except StorageError:
        raise
    except exc.DBAPIError as error:
        raise describe_db_error(engine, error) from None


def ensure_schema(engine: Engine) -> None:
    """Migrate to head if needed; refuse (unchanged) a database from a newer workflow-rl."""
    url = engine.url.render_as_string(hide_password=True)
    stored = _probe(engine)
    if stored == head_revision():
        return
    _check_known(stored, url)
    upgrade(engine)


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Run pending migrations in one transaction; returns (revision before, revision after).

    The stored revision is re-read under the write lock (SQLite BEGIN IMMEDIATE, PostgreSQL
    advisory lock) so that two processes opening a fresh database at once migrate it only once.
    """
    url = engine.url.render_as_string(hide_password=True)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            before = current_revision(conn)
            _check_known(before, url)
            if before != head_revision():
                command.upgrade(alembic_config(conn), "head")
            return before, head_revision()
    except StorageError:
        raise
    except exc.DBAPIError as error:
        raise describe_db_error(engine, error) from None


def autogenerate_revision(message: str, script_location: Path = MIGRATIONS_DIR) -> Path:
    """Development helper: write the next migration from the diff between models.py and head.

    Builds a scratch SQLite database at the current head of ``script_location``, lets Alembic
    autogenerate against it (batch mode), and names the revision ``NNNN`` (head + 1). Review the file:
    autogenerate misses renames, and changed views must be dropped/recreated by hand (see views.py).
    Run as ``python -m storage.migrate "add column x"``.
    """
    script = ScriptDirectory.from_config(alembic_config(script_location=script_location))
    head = script.get_current_head()
    rev_id = f"{int(head) + 1:04d}" if head and head.isdigit() else None
    with tempfile.TemporaryDirectory() as tmp:
        # A plain engine: a throwaway file needs none of storage.engine's locking (which imports this module).
        engine = create_engine(f"sqlite:///{Path(tmp) / 'scratch.db'}")
        try:
            with engine.begin() as conn:
                command.upgrade(alembic_config(conn, script_location), "head")
                made = command.revision(alembic_config(conn, script_location), message=message,
                                        autogenerate=True, rev_id=rev_id)
        finally:
            engine.dispose()
    _script.cache_clear()
    assert made is not None and not isinstance(made, list)
    return Path(made.path)


if __name__ == "__main__":
    import sys

    print(autogenerate_revision(" ".join(sys.argv[1:]) or "schema change"))
