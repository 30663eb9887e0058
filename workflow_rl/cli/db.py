"""Database commands: ``db upgrade``, ``sql``, ``runs`` and ``show``.

All of them take ``--db`` before or after the command (:mod:`workflow_rl.cli.options`); tables fit
the terminal (:mod:`workflow_rl.cli.tables`); errors are :class:`WorkflowRLError`, printed as one
line by the CLI edge.
"""

from __future__ import annotations

import csv
import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax
from sqlalchemy import Engine, select

from storage import read_session_scope, repo
from storage.engine import create_db_engine
from storage.listing import run_listing
from storage.migrate import upgrade as migrate_upgrade
from storage.models import Run, SearchNode
from storage.sql import execute_sql
from workflow_rl.cli.hints import empty_result_hints, named_runs
from workflow_rl.cli.options import DbOption, resolve_db
from workflow_rl.cli.tables import cell, print_table
from workflow_rl.errors import WorkflowRLError
from workflow_rl.loop.search_run import open_existing

db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)


def _console() -> Console:
    return Console(soft_wrap=False)


WIDE_HELP = "Print every column in full (by default tables fit the terminal, 80 columns when piped)."

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
    wide: Annotated[bool, typer.Option("--wide", help=WIDE_HELP)] = False,
    db: DbOption = None,
) -> None:
    """Run one SQL statement and print its rows (read-only unless --write; views: see docs/storage.md)."""
    if fmt not in ("table", "csv", "json"):
        raise WorkflowRLError(f"--format {fmt!r} is not one of table, csv, json")
    engine = open_existing(resolve_db(ctx, db))
    try:
        result = execute_sql(engine, query, write=write)
        hints = _empty_result_hints(engine, query) if result.columns and not result.rows else []
    finally:
        engine.dispose()
    for hint in hints:  # on stderr: csv and json output stay machine-readable
        typer.echo(hint, err=True)
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
        print_table(_console(), result.columns, result.rows, wide=wide)


def _empty_result_hints(engine: Engine, query: str) -> list[str]:
    """Hints for run names in ``query`` that explain why it found nothing (see :mod:`.hints`)."""
    if not named_runs(query):
        return []
    with read_session_scope(engine) as session:
        listing = run_listing(session)
    rounds: dict[str, list[str]] = {}
    by_id = {r.id: r.name for r in listing}
    for r in listing:
        if r.depth == 1 and r.parent_id in by_id:
            rounds.setdefault(by_id[r.parent_id], []).append(r.name)
    return empty_result_hints(query, set(by_id.values()), rounds)


RUNS_COLUMNS = ("id", "name", "kind", "status", "workflows", "evaluations", "best val", "benchmark", "created")
"""Columns of ``workflow-rl runs``, most useful first (the last ones give way on a narrow terminal)."""


def runs(
    ctx: typer.Context,
    wide: Annotated[bool, typer.Option("--wide", help=WIDE_HELP)] = False,
    db: DbOption = None,
) -> None:
    """List runs: each loop with its totals, its rounds under it.

    evaluations: every stored execution (workflow x problem x repeat, any split).

    best val: the best workflow's mean validation reward.
    """
    engine = open_existing(resolve_db(ctx, db))
    try:
        with read_session_scope(engine) as session:
            listing = run_listing(session)
    finally:
        engine.dispose()
    if not listing:
        typer.echo("no runs yet")
        return
    rows = [
        (r.id, "  " * r.depth + r.name, f"round {r.loop_round}" if r.depth else r.kind, r.status, r.workflows,
         r.evaluations, "-" if r.best_validation is None else f"{r.best_validation:.3f}", r.benchmark,
         f"{r.created_at:%Y-%m-%d %H:%M}" if hasattr(r.created_at, "strftime") else str(r.created_at)[:16])
        for r in listing
    ]
    print_table(_console(), RUNS_COLUMNS, rows, title="runs", wide=wide, fold=("name",))


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
                print_table(
                    console, ["split", "mean reward", "evaluations", "problems", "total cost"],
                    [(s["split"], s["mean_reward"], s["n_evaluations"], s["n_problems"], s["total_cost"])
                     for s in scores],
                    title="scores",
                )
            else:
                console.print("scores: not evaluated yet")
            chain = " <- ".join(f"#{w.id} ({w.source}, round {w.round})" for w in lineage)
            console.print(f"lineage: {chain}")
            if node is not None:
                mean = node.value_sum / node.visits if node.visits else None
                console.print(f"search node: visits {node.visits}, mean value {cell(mean)}, "
                              f"prior {cell(node.prior)}, depth {node.depth}, expanded {node.expanded}")
            for g in generations:
                n_tokens = len(g.completion_token_ids) if g.completion_token_ids is not None else None
                console.print(
                    f"generation {g.id}: sampler {g.sampler}, policy version {g.policy_version or 'base'}, "
                    f"T={cell(g.temperature)} top_p={cell(g.top_p)} top_k={cell(g.top_k)}, group {g.group_key}, "
                    f"completion tokens {cell(n_tokens)}, behavior logprobs "
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
