"""Options every command shares: ``--db`` is accepted before the subcommand and after it.

``workflow-rl --db X runs`` and ``workflow-rl runs --db X`` mean the same; with both, the one after
the subcommand wins (it is the one nearest to the command it configures). The environment variable
``WORKFLOW_RL_DB`` is read by the global option, so it only applies where no ``--db`` was typed.
"""

from __future__ import annotations

from typing import Annotated

import typer

DEFAULT_DB = "./workflow_rl.db"
"""Database used when neither ``--db`` nor ``WORKFLOW_RL_DB`` names one."""

DB_ENV = "WORKFLOW_RL_DB"
"""Environment variable that names the database."""

DB_HELP = ("Database: a file path (SQLite) or any SQLAlchemy URL, e.g. postgresql+psycopg://u@host/db "
           f"(default {DEFAULT_DB}; accepted before or after the command).")

DbOption = Annotated[
    str | None,
    typer.Option("--db", envvar=DB_ENV, show_default=False, help=DB_HELP),
]
"""The ``--db`` parameter of a subcommand; pass its value to :func:`resolve_db`."""


def resolve_db(ctx: typer.Context, db: str | None) -> str:
    """The database a subcommand uses: its own ``--db`` if typed, else the global one (typed, env, default).

    The subcommand's option also reads the environment variable (so ``--help`` shows it), but a value
    that came from the environment must not beat a global ``--db`` typed on the command line.
    """
    source = ctx.get_parameter_source("db")
    if db is not None and source is not None and source.name == "COMMANDLINE":
        return db
    root = ctx.find_root()
    return (root.obj or {}).get("db") or db or DEFAULT_DB
