"""runs.parent_id and runs.loop_round: a loop's round runs point at their loop; views gain loop, loop_round.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

A loop ``L`` stores round ``k`` as the run ``L/r<k>``; before this revision nothing in SQL tied the
two together, so ``WHERE run = 'L'`` in the views found nothing. Existing round runs are linked from
each loop's ``runs.state`` (``rounds -> {k: {search_run: name}}``), read in Python because JSON
access differs between SQLite and PostgreSQL. The four views are dropped and recreated with the new
``loop`` and ``loop_round`` columns (their SQL is copied here verbatim, as in 0001).

The columns are added with plain ``ALTER TABLE ... ADD COLUMN`` on both backends, never a batch
rebuild: rebuilding ``runs`` on SQLite (foreign keys on) would drop the old table, and that implicit
DELETE cascades to every workflow, evaluation and node of every run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS_SQL: tuple[tuple[str, str], ...] = (
    (
        "leaderboard",
        "SELECT w.id AS workflow_id, w.run_id AS run_id, r.name AS run, COALESCE(parent.name, r.name) AS loop,"
        " r.loop_round AS loop_round, w.round AS round, w.source AS source, w.valid AS valid,"
        " AVG(e.reward) AS mean_reward, COUNT(e.id) AS n_evaluations, COUNT(DISTINCT e.problem_id) AS n_problems,"
        " SUM(e.cost) AS total_cost"
        " FROM workflows w"
        " JOIN runs r ON r.id = w.run_id"
        " LEFT JOIN runs parent ON parent.id = r.parent_id"
        " JOIN evaluations e ON e.workflow_id = w.id"
        " JOIN problems p ON p.id = e.problem_id"
        " WHERE p.split = 'validation'"
        " GROUP BY w.id, w.run_id, r.name, parent.name, r.loop_round, w.round, w.source, w.valid",
    ),
    (
        "problem_matrix",
        "SELECT e.workflow_id AS workflow_id, w.run_id AS run_id, r.name AS run,"
        " COALESCE(parent.name, r.name) AS loop, r.loop_round AS loop_round, e.problem_id AS problem_id,"
        " p.benchmark AS benchmark, p.split AS split, p.key AS problem_key, AVG(e.reward) AS mean_reward,"
        " MAX(e.reward) AS best_reward, COUNT(e.id) AS n_repeats, SUM(e.cost) AS total_cost"
        " FROM evaluations e"
        " JOIN workflows w ON w.id = e.workflow_id"
        " JOIN runs r ON r.id = w.run_id"
        " LEFT JOIN runs parent ON parent.id = r.parent_id"
        " JOIN problems p ON p.id = e.problem_id"
        " GROUP BY e.workflow_id, w.run_id, r.name, parent.name, r.loop_round, e.problem_id, p.benchmark,"
        " p.split, p.key",
    ),
    (
        "round_summary",
        "SELECT run_id, run, loop, loop_round, round, COUNT(*) AS n_workflows,"
        " AVG(mean_reward) AS mean_reward, MAX(mean_reward) AS best_reward, SUM(total_cost) AS total_cost"
        " FROM leaderboard GROUP BY run_id, run, loop, loop_round, round",
    ),
    (
        "problem_summary",
        "SELECT run_id, run, loop, loop_round, problem_id, benchmark, split, problem_key,"
        " COUNT(*) AS n_workflows, MAX(mean_reward) AS best_reward, AVG(mean_reward) AS mean_reward"
        " FROM problem_matrix GROUP BY run_id, run, loop, loop_round, problem_id, benchmark, split, problem_key",
    ),
)
"""(view name, SELECT) pairs at this revision, in creation order."""

OLD_VIEWS_SQL: tuple[tuple[str, str], ...] = (
    (
        "leaderboard",
        "SELECT w.id AS workflow_id, w.run_id AS run_id, r.name AS run, w.round AS round, w.source AS source,"
        " w.valid AS valid, AVG(e.reward) AS mean_reward, COUNT(e.id) AS n_evaluations,"
        " COUNT(DISTINCT e.problem_id) AS n_problems, SUM(e.cost) AS total_cost"
        " FROM workflows w"
        " JOIN runs r ON r.id = w.run_id"
        " JOIN evaluations e ON e.workflow_id = w.id"
        " JOIN problems p ON p.id = e.problem_id"
        " WHERE p.split = 'validation'"
        " GROUP BY w.id, w.run_id, r.name, w.round, w.source, w.valid",
    ),
    (
        "problem_matrix",
        "SELECT e.workflow_id AS workflow_id, w.run_id AS run_id, r.name AS run, e.problem_id AS problem_id,"
        " p.benchmark AS benchmark, p.split AS split, p.key AS problem_key, AVG(e.reward) AS mean_reward,"
        " MAX(e.reward) AS best_reward, COUNT(e.id) AS n_repeats, SUM(e.cost) AS total_cost"
        " FROM evaluations e"
        " JOIN workflows w ON w.id = e.workflow_id"
        " JOIN runs r ON r.id = w.run_id"
        " JOIN problems p ON p.id = e.problem_id"
        " GROUP BY e.workflow_id, w.run_id, r.name, e.problem_id, p.benchmark, p.split, p.key",
    ),
    (
        "round_summary",
        "SELECT run_id, run, round, COUNT(*) AS n_workflows, AVG(mean_reward) AS mean_reward,"
        " MAX(mean_reward) AS best_reward, SUM(total_cost) AS total_cost"
        " FROM leaderboard"
        " GROUP BY run_id, run, round",
    ),
    (
        "problem_summary",
        "SELECT run_id, run, problem_id, benchmark, split, problem_key, COUNT(*) AS n_workflows,"
        " MAX(mean_reward) AS best_reward, AVG(mean_reward) AS mean_reward"
        " FROM problem_matrix"
        " GROUP BY run_id, run, problem_id, benchmark, split, problem_key",
    ),
)
"""The views of 0001 (restored by the downgrade)."""


def _drop_views(views: tuple[tuple[str, str], ...]) -> None:
    for name, _select in reversed(views):
        op.execute(f"DROP VIEW IF EXISTS {name}")


def _create_views(views: tuple[tuple[str, str], ...]) -> None:
    for name, select in views:
        op.execute(f"CREATE VIEW {name} AS {select}")


def _link_loop_rounds() -> None:
    """Point every existing round run at its loop, from the loops' stored state."""
    bind = op.get_bind()
    runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("name", sa.String), sa.column("kind", sa.String),
                    sa.column("state", sa.JSON), sa.column("parent_id", sa.Integer),
                    sa.column("loop_round", sa.Integer))
    for loop_id, state in bind.execute(sa.select(runs.c.id, runs.c.state).where(runs.c.kind == "loop")).all():
        if isinstance(state, str):  # a driver that hands JSON back as text
            state = json.loads(state)
        for key, info in ((state or {}).get("rounds") or {}).items():
            name = (info or {}).get("search_run")
            if name and str(key).isdigit():
                bind.execute(runs.update().where(runs.c.name == name, runs.c.id != loop_id)
                             .values(parent_id=loop_id, loop_round=int(key)))


def upgrade() -> None:
    """Add the two columns, link existing loop rounds, recreate the views with loop, loop_round."""
    _drop_views(OLD_VIEWS_SQL)
    if op.get_bind().dialect.name == "sqlite":
        # SQLite's ADD COLUMN accepts an inline, named REFERENCES clause (the column defaults to NULL).
        op.execute("ALTER TABLE runs ADD COLUMN parent_id INTEGER "
                   "CONSTRAINT fk_runs_parent_id_runs REFERENCES runs (id)")
    else:
        op.add_column("runs", sa.Column("parent_id", sa.Integer(), nullable=True))
        op.create_foreign_key("fk_runs_parent_id_runs", "runs", "runs", ["parent_id"], ["id"])
    op.add_column("runs", sa.Column("loop_round", sa.Integer(), nullable=True))
    op.create_index("ix_runs_parent_id", "runs", ["parent_id"], unique=False)
    _link_loop_rounds()
    _create_views(VIEWS_SQL)


def downgrade() -> None:
    """Drop the columns (plain DROP COLUMN: SQLite >= 3.35; never a table rebuild) and restore 0001's views."""
    _drop_views(VIEWS_SQL)
    op.drop_index("ix_runs_parent_id", table_name="runs")
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint("fk_runs_parent_id_runs", "runs", type_="foreignkey")
    op.execute("ALTER TABLE runs DROP COLUMN loop_round")
    op.execute("ALTER TABLE runs DROP COLUMN parent_id")
    _create_views(OLD_VIEWS_SQL)
