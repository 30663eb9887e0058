"""Documented SQL views: questions a user can answer with ``sqlite3 run.db`` or ``workflow-rl sql``.

The views are created by the migrations (``0001`` copies the SQL below verbatim, so that an old
migration never changes when this file does). To change a view, edit it here AND add a migration
that drops and recreates it with the new SQL; ``tests/storage/test_views.py`` checks that the views
in a freshly migrated database are exactly the ones defined here.

Every view carries ``loop`` (the name the user gave: a loop's name for its round runs, else the
run's own name) and ``loop_round`` (NULL outside a loop), so ``WHERE loop = 'name'`` selects a whole
loop and a plain search run alike.

Written in the SQL subset that SQLite and PostgreSQL share. Rewards are in [0, 1]; a NULL cost
means "price unknown" and is skipped by SUM (the sum is NULL only when every cost is unknown).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class View:
    """A named SQL view with its user-facing documentation."""

    name: str
    doc: str
    select: str

    def create_sql(self) -> str:
        """The CREATE VIEW statement."""
        return f"CREATE VIEW {self.name} AS {self.select}"

    def drop_sql(self) -> str:
        """The DROP VIEW statement."""
        return f"DROP VIEW IF EXISTS {self.name}"


LEADERBOARD = View(
    name="leaderboard",
    doc=(
        "One row per workflow that has validation evaluations: workflow_id, run_id, run (name), loop "
        "(the loop's name for a loop round's run, else the run's name), loop_round, round, source, valid, mean_reward over all its validation evaluations (every problem and repeat), "
        "n_evaluations, n_problems (distinct), total_cost (USD, NULL if unknown). Validation split only, "
        "so test problems never leak into selection."
    ),
    select=(
        "SELECT w.id AS workflow_id, w.run_id AS run_id, r.name AS run, "
        "COALESCE(parent.name, r.name) AS loop, r.loop_round AS loop_round, w.round AS round, "
        "w.source AS source, w.valid AS valid, AVG(e.reward) AS mean_reward, "
        "COUNT(e.id) AS n_evaluations, COUNT(DISTINCT e.problem_id) AS n_problems, "
        "SUM(e.cost) AS total_cost "
        "FROM workflows w "
        "JOIN runs r ON r.id = w.run_id "
        "LEFT JOIN runs parent ON parent.id = r.parent_id "
        "JOIN evaluations e ON e.workflow_id = w.id "
        "JOIN problems p ON p.id = e.problem_id "
        "WHERE p.split = 'validation' "
        "GROUP BY w.id, w.run_id, r.name, parent.name, r.loop_round, w.round, w.source, w.valid"
    ),
)

PROBLEM_MATRIX = View(
    name="problem_matrix",
    doc=(
        "One row per (workflow, problem) that was evaluated, any split: workflow_id, run_id, run, loop, "
        "loop_round, problem_id, benchmark, split, problem_key, mean_reward (averaged over repeats), best_reward, "
        "n_repeats, total_cost."
    ),
    select=(
        "SELECT e.workflow_id AS workflow_id, w.run_id AS run_id, r.name AS run, "
        "COALESCE(parent.name, r.name) AS loop, r.loop_round AS loop_round, e.problem_id AS problem_id, p.benchmark AS benchmark, p.split AS split, p.key AS problem_key, "
        "AVG(e.reward) AS mean_reward, MAX(e.reward) AS best_reward, COUNT(e.id) AS n_repeats, "
        "SUM(e.cost) AS total_cost "
        "FROM evaluations e "
        "JOIN workflows w ON w.id = e.workflow_id "
        "JOIN runs r ON r.id = w.run_id "
        "LEFT JOIN runs parent ON parent.id = r.parent_id "
        "JOIN problems p ON p.id = e.problem_id "
        "GROUP BY e.workflow_id, w.run_id, r.name, parent.name, r.loop_round, e.problem_id, p.benchmark, "
        "p.split, p.key"
    ),
)

ROUND_SUMMARY = View(
    name="round_summary",
    doc=(
        "One row per (run, round) from the leaderboard (validation only): run_id, run, loop, loop_round, "
        "round, "
        "n_workflows, mean_reward (mean of the workflows' mean rewards), best_reward (the best "
        "workflow's mean reward), total_cost."
    ),
    select=(
        "SELECT run_id, run, loop, loop_round, round, COUNT(*) AS n_workflows, "
        "AVG(mean_reward) AS mean_reward, MAX(mean_reward) AS best_reward, SUM(total_cost) AS total_cost "
        "FROM leaderboard GROUP BY run_id, run, loop, loop_round, round"
    ),
)

PROBLEM_SUMMARY = View(
    name="problem_summary",
    doc=(
        "One row per evaluated problem and run: run_id, run, loop, loop_round, problem_id, benchmark, split, problem_key, "
        "n_workflows that tried it, best_reward (best per-workflow mean over repeats) and "
        "mean_reward (mean over those workflows). best_reward < 1 means no workflow solves it."
    ),
    select=(
        "SELECT run_id, run, loop, loop_round, problem_id, benchmark, split, problem_key, "
        "COUNT(*) AS n_workflows, MAX(mean_reward) AS best_reward, AVG(mean_reward) AS mean_reward "
        "FROM problem_matrix GROUP BY run_id, run, loop, loop_round, problem_id, benchmark, split, problem_key"
    ),
)

VIEWS: tuple[View, ...] = (LEADERBOARD, PROBLEM_MATRIX, ROUND_SUMMARY, PROBLEM_SUMMARY)
"""All views, in creation order (later ones read earlier ones; drop in reverse)."""
