"""The storage layer's one error type (a user-facing message that names the problem and the fix),
the helpers that word database errors, and the read-only connection option.

The lowest module of ``storage``: the engine and the migrations both use it.

``storage`` imports nothing of the rest of the project (docs/design.md, enforced by import-linter
in CI), so it cannot raise ``workflow_rl.errors.WorkflowRLError``; the command line catches this
type next to that one and prints it the same way (one line, exit 1).
"""

from __future__ import annotations

from sqlalchemy import Engine, exc, make_url


class StorageError(Exception):
    """A database problem a user can fix (bad URL, unreachable server, newer schema, refused SQL)."""


READONLY_OPTION = "workflow_rl_readonly"
"""Connection execution option: when true the transaction is read-only at the database level."""

def display_url(url: str) -> str:
    """The URL with any password masked, for error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        return url


def describe_db_error(engine: Engine, error: BaseException) -> StorageError:
    """Turn a driver error met while opening a database into a one-line project error."""
    url = display_url(engine.url.render_as_string(hide_password=False))
    first = str(getattr(error, "orig", None) or error).strip().splitlines()[0] if str(error).strip() else ""
    if "file is not a database" in first or "malformed" in first:
        return StorageError(
            f"{url} is not a SQLite database (or it is corrupt): {first}; point --db at another file"
        )
    return StorageError(f"cannot open database {url}: {first}; check the --db URL and that the server runs")
