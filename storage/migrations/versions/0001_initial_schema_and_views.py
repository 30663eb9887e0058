"""Initial schema (every table of storage/models.py) and the documented SQL views.

Revision ID: 0001
Revises:
Create Date: 2026-11-21

The view SQL is copied verbatim from storage/views.py as of this revision (a migration must never
change after release); tests/storage/test_views.py checks that the two agree at head.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


VIEWS_SQL: tuple[tuple[str, str], ...] = (
    (
        "leaderboard",
        "SELECT w.id AS workflow_id, w.run_id AS run_id, r.name AS run, w.round AS round, w.source AS source, w.valid AS valid, AVG(e.reward) AS mean_reward, COUNT(e.id) AS n_evaluations, COUNT(DISTINCT e.problem_id) AS n_problems, SUM(e.cost) AS total_cost"
        " FROM workflows w"
        " JOIN runs r ON r.id = w.run_id"
        " JOIN evaluations e ON e.workflow_id = w.id"
        " JOIN problems p ON p.id = e.problem_id"
        " WHERE p.split = 'validation'"
        " GROUP BY w.id, w.run_id, r.name, w.round, w.source, w.valid",
    ),
    (
        "problem_matrix",
        "SELECT e.workflow_id AS workflow_id, w.run_id AS run_id, r.name AS run, e.problem_id AS problem_id, p.benchmark AS benchmark, p.split AS split, p.key AS problem_key, AVG(e.reward) AS mean_reward, MAX(e.reward) AS best_reward, COUNT(e.id) AS n_repeats, SUM(e.cost) AS total_cost"
        " FROM evaluations e"
        " JOIN workflows w ON w.id = e.workflow_id"
        " JOIN runs r ON r.id = w.run_id"
        " JOIN problems p ON p.id = e.problem_id"
        " GROUP BY e.workflow_id, w.run_id, r.name, e.problem_id, p.benchmark, p.split, p.key",
    ),
    (
        "round_summary",
        "SELECT run_id, run, round, COUNT(*) AS n_workflows, AVG(mean_reward) AS mean_reward, MAX(mean_reward) AS best_reward, SUM(total_cost) AS total_cost"
        " FROM leaderboard"
        " GROUP BY run_id, run, round",
    ),
    (
        "problem_summary",
        "SELECT run_id, run, problem_id, benchmark, split, problem_key, COUNT(*) AS n_workflows, MAX(mean_reward) AS best_reward, AVG(mean_reward) AS mean_reward"
        " FROM problem_matrix"
        " GROUP BY run_id, run, problem_id, benchmark, split, problem_key",
    ),
)
"""(view name, SELECT) pairs, in creation order."""


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "problems",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("benchmark", sa.String(length=100), nullable=False),
        sa.Column("split", sa.String(length=20), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("reference", sa.JSON(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_problems")),
        sa.UniqueConstraint("benchmark", "key", name=op.f("uq_problems_benchmark_key")),
    )
    with op.batch_alter_table("problems", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_problems_split"), ["split"], unique=False)

    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("benchmark", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("name", name=op.f("uq_runs_name")),
    )
    op.create_table(
        "policy_checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_policy_checkpoints_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_checkpoints")),
    )
    with op.batch_alter_table("policy_checkpoints", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_policy_checkpoints_run_id"), ["run_id"], unique=False)

    op.create_table(
        "train_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("checkpoint_id", sa.Integer(), nullable=True),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["policy_checkpoints.id"],
            name=op.f("fk_train_steps_checkpoint_id_policy_checkpoints"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_train_steps_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_train_steps")),
        sa.UniqueConstraint("run_id", "round", "step", name=op.f("uq_train_steps_run_id_round_step")),
    )
    with op.batch_alter_table("train_steps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_train_steps_run_id"), ["run_id"], unique=False)

    op.create_table(
        "workflows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("graph_hash", sa.String(length=64), nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("checkpoint_id", sa.Integer(), nullable=True),
        sa.Column("valid", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["policy_checkpoints.id"],
            name=op.f("fk_workflows_checkpoint_id_policy_checkpoints"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["workflows.id"],
            name=op.f("fk_workflows_parent_id_workflows"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_workflows_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflows")),
        sa.UniqueConstraint("run_id", "code_hash", name=op.f("uq_workflows_run_id_code_hash")),
    )
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workflows_graph_hash"), ["graph_hash"], unique=False)
        batch_op.create_index(batch_op.f("ix_workflows_run_id"), ["run_id"], unique=False)

    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.Integer(), nullable=False),
        sa.Column("problem_id", sa.Integer(), nullable=False),
        sa.Column("repeat", sa.Integer(), nullable=False),
        sa.Column("reward", sa.Float(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error_kind", sa.String(length=40), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("cost", sa.Float(), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["problem_id"],
            ["problems.id"],
            name=op.f("fk_evaluations_problem_id_problems"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_evaluations_run_id_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.id"],
            name=op.f("fk_evaluations_workflow_id_workflows"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
        sa.UniqueConstraint(
            "workflow_id", "problem_id", "repeat", name=op.f("uq_evaluations_workflow_id_problem_id_repeat")
        ),
    )
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_evaluations_problem_id"), ["problem_id"], unique=False)
        batch_op.create_index("ix_evaluations_run_id_workflow_id", ["run_id", "workflow_id"], unique=False)

    op.create_table(
        "generations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.Integer(), nullable=False),
        sa.Column("problem_id", sa.Integer(), nullable=True),
        sa.Column("parent_workflow_id", sa.Integer(), nullable=True),
        sa.Column("group_key", sa.String(length=200), nullable=False),
        sa.Column("prompt_text", sa.Text(), nullable=False),
        sa.Column("prompt_token_ids", sa.JSON(), nullable=True),
        sa.Column("completion_text", sa.Text(), nullable=False),
        sa.Column("completion_token_ids", sa.JSON(), nullable=True),
        sa.Column("behavior_logprobs", sa.JSON(), nullable=True),
        sa.Column("temperature", sa.Float(), nullable=True),
        sa.Column("top_p", sa.Float(), nullable=True),
        sa.Column("top_k", sa.Integer(), nullable=True),
        sa.Column("sampler", sa.String(length=100), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=True),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_workflow_id"],
            ["workflows.id"],
            name=op.f("fk_generations_parent_workflow_id_workflows"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["policy_version"],
            ["policy_checkpoints.id"],
            name=op.f("fk_generations_policy_version_policy_checkpoints"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["problem_id"],
            ["problems.id"],
            name=op.f("fk_generations_problem_id_problems"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_generations_run_id_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.id"],
            name=op.f("fk_generations_workflow_id_workflows"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generations")),
    )
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_generations_group_key"), ["group_key"], unique=False)
        batch_op.create_index(batch_op.f("ix_generations_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_generations_workflow_id"), ["workflow_id"], unique=False)

    op.create_table(
        "search_nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.Integer(), nullable=False),
        sa.Column("parent_node_id", sa.Integer(), nullable=True),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("visits", sa.Integer(), nullable=False),
        sa.Column("value_sum", sa.Float(), nullable=False),
        sa.Column("prior", sa.Float(), nullable=True),
        sa.Column("expanded", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_node_id"],
            ["search_nodes.id"],
            name=op.f("fk_search_nodes_parent_node_id_search_nodes"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_search_nodes_run_id_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.id"],
            name=op.f("fk_search_nodes_workflow_id_workflows"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_nodes")),
        sa.UniqueConstraint("run_id", "workflow_id", name=op.f("uq_search_nodes_run_id_workflow_id")),
    )
    with op.batch_alter_table("search_nodes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_search_nodes_run_id"), ["run_id"], unique=False)

    for name, select in VIEWS_SQL:
        op.execute(f"CREATE VIEW {name} AS {select}")


def downgrade() -> None:
    """Revert this revision."""
    for name, _select in reversed(VIEWS_SQL):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    with op.batch_alter_table("search_nodes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_search_nodes_run_id"))

    op.drop_table("search_nodes")
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_generations_workflow_id"))
        batch_op.drop_index(batch_op.f("ix_generations_run_id"))
        batch_op.drop_index(batch_op.f("ix_generations_group_key"))

    op.drop_table("generations")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_index("ix_evaluations_run_id_workflow_id")
        batch_op.drop_index(batch_op.f("ix_evaluations_problem_id"))

    op.drop_table("evaluations")
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workflows_run_id"))
        batch_op.drop_index(batch_op.f("ix_workflows_graph_hash"))

    op.drop_table("workflows")
    with op.batch_alter_table("train_steps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_train_steps_run_id"))

    op.drop_table("train_steps")
    with op.batch_alter_table("policy_checkpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_policy_checkpoints_run_id"))

    op.drop_table("policy_checkpoints")
    op.drop_table("runs")
    with op.batch_alter_table("problems", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_problems_split"))

    op.drop_table("problems")
