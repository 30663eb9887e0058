"""Run one user-written SQL statement, read-only unless asked otherwise (behind ``workflow-rl sql``).

Read-only is enforced by the database, not by parsing the text: the statement runs inside
``read_session_scope`` (SQLite ``PRAGMA query_only``, PostgreSQL ``SET TRANSACTION READ ONLY``).
Exactly one statement runs: sqlite3 refuses several, and on PostgreSQL we prepare the statement
(which the server refuses for several), so ``COMMIT; DELETE ...`` cannot escape the read-only
transaction. The statement goes to the driver verbatim (no bind-parameter parsing), so ``%`` and
``:name`` in string literals are safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from storage.engine import read_session_scope, session_scope
from storage.errors import StorageError

_PG_READ_ONLY_SQLSTATE = "25006"  # read_only_sql_transaction


@dataclass
class SqlResult:
    """What a statement returned: column names and rows (empty for non-queries), rows changed."""

    columns: list[str] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    rowcount: int = -1


def _is_read_only_violation(error: BaseException) -> bool:
    if getattr(error, "sqlstate", None) == _PG_READ_ONLY_SQLSTATE:
        return True
    text = str(error).lower()
    return "readonly database" in text or "read-only transaction" in text


def execute_sql(engine: Engine, sql: str, *, write: bool = False) -> SqlResult:
    """Run ``sql`` (one statement) in its own transaction; read-only unless ``write``.

    Raises :class:`StorageError` with one line for an SQL error or a write attempt without ``write``.
    """
    dbapi_error = engine.dialect.loaded_dbapi.Error
    scope = session_scope if write else read_session_scope
    try:
        with scope(engine) as session:
            cursor = session.connection().connection.dbapi_connection.cursor()
            try:
                if engine.dialect.name == "postgresql":
                    cursor.execute(sql, prepare=True)
                else:
                    cursor.execute(sql)
                columns = [d[0] for d in cursor.description] if cursor.description else []
                rows = [tuple(r) for r in cursor.fetchall()] if columns else []
                return SqlResult(columns, rows, cursor.rowcount)
            finally:
                cursor.close()
    except dbapi_error as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if not write and _is_read_only_violation(error):
            raise StorageError(
                f"the statement would change the database ({first}); `workflow-rl sql` is read-only "
                "unless you pass --write"
            ) from None
        raise StorageError(f"SQL error: {first}") from None
