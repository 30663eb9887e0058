"""Database commands: ``db upgrade``, ``sql``, ``runs`` and ``show``.

All of them take ``--db`` before or after the command (:mod:`workflow_rl.cli.options`); errors are :class:`WorkflowRLError`,
printed as one line by the CLI edge.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from sqlalchemy import Engine, make_url, select, text
from sqlalchemy.exc import ArgumentError

from storage import open_db, read_session_scope, repo
from storage.engine import create_db_engine, normalize_url
from storage.migrate import upgrade as migrate_upgrade
from storage.models import Run, SearchNode
from storage.sql import execute_sql
from workflow_rl.cli.options import DbOption, resolve_db
from workflow_rl.errors import WorkflowRLError

db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)


def _console() -> Console:
    return Console(soft_wrap=False)


def _cell(value: Any) -> str:
    """Render one SQL value: NULL for None, 4 significant digits for floats."""
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(columns: list[str], rows: list[tuple[Any, ...]], title: str | None = None) -> Table:
    table = Table(title=title, show_lines=False)
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    return table


def open_existing(db: str) -> Engine:
    """Open a database that must already exist (a typo in --db must not create a stray empty file)."""
    try:
        url = make_url(normalize_url(db))
    except ArgumentError:
        return open_db(db)  # raises the one-line "invalid database URL" error
    path = url.database
    if url.get_backend_name() == "sqlite" and path and path != ":memory:" and not Path(path).exists():
        raise WorkflowRLError(f"no database at {path}; pass --db (or set WORKFLOW_RL_DB) to an existing one, "
                              "or create it with: workflow-rl db upgrade")
    return open_db(db)


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, db: DbOption = None) -> None:
    """Apply pending schema migrations (opening a database does this too)."""
    engine = create_db_engine(resolve_db(ctx, db))
    try:
        before, after = migrate_upgrade(engine)
    finally:
        engine.dispose()
    where = engine.url.render_as_string(hide_password=True)
    if before == after:
        typer.echo(f"{where}: already at revision {after}")
    else:
        typer.echo(f"{where}: upgraded {before or 'empty'} -> {after}")


def sql(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="One SQL statement, e.g. \"SELECT * FROM leaderboard LIMIT 5\".")],
    write: Annotated[bool, typer.Option("--write", help="Allow statements that change the database.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="Output: table, csv or json (one object per row).")] = "table",
    db: DbOption = None,
) -> None:
    """Run one SQL statement and print its rows (read-only unless --write; views: see README)."""
    if fmt not in ("table", "csv", "json"):
        raise WorkflowRLError(f"--format {fmt!r} is not one of table, csv, json")
    engine = open_existing(resolve_db(ctx, db))
    try:
        result = execute_sql(engine, query, write=write)
    finally:
        engine.dispose()
    if not result.columns:
        typer.echo(f"ok ({result.rowcount} rows changed)" if result.rowcount >= 0 else "ok")
    elif fmt == "csv":
        out = csv.writer(sys.stdout)
        out.writerow(result.columns)
        out.writerows(result.rows)
    elif fmt == "json":
        for row in result.rows:
            typer.echo(json.dumps(dict(zip(result.columns, row, strict=True)), default=str))
    else:
        _console().print(_table(result.columns, result.rows))


_RUNS_SQL = """
SELECT r.id, r.name, r.benchmark, r.kind, r.status, r.created_at,
       (SELECT COUNT(*) FROM workflows w WHERE w.run_id = r.id) AS workflows,
       (SELECT COUNT(*) FROM evaluations e WHERE e.run_id = r.id) AS evaluations,
       (SELECT MAX(l.mean_reward) FROM leaderboard l WHERE l.run_id = r.id) AS best_validation
FROM runs r ORDER BY r.id
"""


def runs(ctx: typer.Context, db: DbOption = None) -> None:
    """List runs with their workflow and evaluation counts and best validation reward."""
    engine = open_existing(resolve_db(ctx, db))
    try:
        with read_session_scope(engine) as session:
            result = session.execute(text(_RUNS_SQL))
            columns, rows = list(result.keys()), [tuple(r) for r in result]
    finally:
        engine.dispose()
    if not rows:
        typer.echo("no runs yet")
        return
    _console().print(_table(columns, rows, title="runs"))


def show(
    ctx: typer.Context,
    workflow_id: Annotated[int, typer.Argument(help="Workflow id (see the leaderboard view).")],
    db: DbOption = None,
) -> None:
    """Show a workflow: code (highlighted), scores per split, lineage and how it was generated."""
    engine = open_existing(resolve_db(ctx, db))
    try:
        with read_session_scope(engine) as session:
            workflow = repo.get_workflow(session, workflow_id)
            if workflow is None:
                raise WorkflowRLError(f"no workflow with id {workflow_id}; list some with: workflow-rl sql "
                                      "\"SELECT workflow_id, run, mean_reward FROM leaderboard\"")
            run = session.get(Run, workflow.run_id)
            scores = repo.workflow_scores(session, workflow_id)
            lineage = repo.workflow_lineage(session, workflow_id)
            generations = repo.generations_for(session, workflow_id)
            node = session.scalars(select(SearchNode).where(SearchNode.workflow_id == workflow_id)).first()
            console = _console()
            status = "valid" if workflow.valid else f"INVALID: {workflow.error}"
            console.print(Panel(
                f"run {run.name!r} (id {run.id}) · round {workflow.round} · source {workflow.source} · {status}\n"
                f"code hash {workflow.code_hash[:16]} · graph hash {(workflow.graph_hash or '-')[:16]} · "
                f"checkpoint {workflow.checkpoint_id or '-'} · created {workflow.created_at:%Y-%m-%d %H:%M:%S}",
                title=f"workflow {workflow.id}",
            ))
            console.print(Syntax(workflow.code, "python", line_numbers=True))
            if scores:
                console.print(_table(
                    ["split", "mean reward", "evaluations", "problems", "total cost"],
                    [(s["split"], s["mean_reward"], s["n_evaluations"], s["n_problems"], s["total_cost"])
                     for s in scores],
                    title="scores",
                ))
            else:
                console.print("scores: not evaluated yet")
            chain = " <- ".join(f"#{w.id} ({w.source}, round {w.round})" for w in lineage)
            console.print(f"lineage: {chain}")
            if node is not None:
                mean = node.value_sum / node.visits if node.visits else None
                console.print(f"search node: visits {node.visits}, mean value {_cell(mean)}, "
                              f"prior {_cell(node.prior)}, depth {node.depth}, expanded {node.expanded}")
            for g in generations:
                n_tokens = len(g.completion_token_ids) if g.completion_token_ids is not None else None
                console.print(
                    f"generation {g.id}: sampler {g.sampler}, policy version {g.policy_version or 'base'}, "
                    f"T={_cell(g.temperature)} top_p={_cell(g.top_p)} top_k={_cell(g.top_k)}, group {g.group_key}, "
                    f"completion tokens {_cell(n_tokens)}, behavior logprobs "
                    f"{'stored' if g.behavior_logprobs is not None else 'none'}, truncated {g.truncated}"
                )
    finally:
        engine.dispose()


def register(app: typer.Typer) -> None:
    """Add ``db``, ``sql``, ``runs`` and ``show`` to the main app."""
    app.add_typer(db_app, name="db")
    app.command("sql")(sql)
    app.command("runs")(runs)
    app.command("show")(show)
