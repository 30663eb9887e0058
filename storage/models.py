"""Typed SQLAlchemy 2 ORM models: the one schema every part of workflow-rl reads and writes.

Column names are part of the public SQL surface (the queries of docs/storage.md, views), so rename with a migration.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# A naming convention makes constraint names deterministic, which Alembic needs for batch
# (SQLite) migrations and which keeps autogenerate diffs empty across backends.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

WORKFLOW_SOURCES = ("seed", "mutation", "llm", "policy")
"""Allowed values of ``workflows.source``."""


def utcnow() -> datetime:
    """Timezone-aware UTC now, the default of every ``created_at``."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base carrying the naming-convention metadata."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Run(Base):
    """One named search/train run (a run may span several loop rounds)."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    benchmark: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20), default="search")  # search | loop | train | eval
    status: Mapped[str] = mapped_column(String(20), default="running")  # running | done | failed
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[dict[str, Any]] = mapped_column(default=dict)  # resumable driver state (rng, counters)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # A loop's rounds are runs of their own (``<loop>/r<k>``) that point at the loop run, so that
    # listings and views can show them as one thing under the name the user gave. No ON DELETE
    # action: SQLite can only add this key inline (ADD COLUMN), where its reflection cannot read an
    # action back, and a loop is not meant to be deleted while its rounds remain.
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)
    loop_round: Mapped[int | None] = mapped_column(Integer)  # which round of the parent loop, else NULL


class Problem(Base):
    """One benchmark problem; unique per (benchmark, key)."""

    __tablename__ = "problems"
    __table_args__ = (UniqueConstraint("benchmark", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    benchmark: Mapped[str] = mapped_column(String(100))
    split: Mapped[str] = mapped_column(String(20), index=True)  # train | validation | test
    key: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    reference: Mapped[Any] = mapped_column(JSON)  # answer, or tests for code tasks
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)  # family, entry point, ...


class PolicyCheckpoint(Base):
    """A saved policy (adapter or full weights + tokenizer + optimizer state)."""

    __tablename__ = "policy_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    base_model: Mapped[str] = mapped_column(Text)
    round: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Workflow(Base):
    """A workflow program with its provenance; unique per (run, code hash)."""

    __tablename__ = "workflows"
    __table_args__ = (UniqueConstraint("run_id", "code_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    code: Mapped[str] = mapped_column(Text)
    code_hash: Mapped[str] = mapped_column(String(64))
    graph_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("workflows.id", ondelete="SET NULL"))
    round: Mapped[int] = mapped_column(Integer, default=0)
    source: Mapped[str] = mapped_column(String(20))  # one of WORKFLOW_SOURCES
    checkpoint_id: Mapped[int | None] = mapped_column(
        ForeignKey("policy_checkpoints.id", ondelete="SET NULL")
    )
    valid: Mapped[bool] = mapped_column(Boolean, default=True)
    error: Mapped[str | None] = mapped_column(Text)  # validation error, if invalid
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Generation(Base):
    """Exactly what a sampler produced for one workflow: the GRPO sample record.

    ``group_key`` names the sibling set drawn from one prompt. A policy generation must carry
    token ids and per-token behavior logprobs; search-made workflows have no generation row
    (or one with ``sampler`` naming the LLM optimizer and no logprobs).
    """

    __tablename__ = "generations"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    workflow_id: Mapped[int] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"), index=True)
    problem_id: Mapped[int | None] = mapped_column(ForeignKey("problems.id", ondelete="SET NULL"))
    parent_workflow_id: Mapped[int | None] = mapped_column(
        ForeignKey("workflows.id", ondelete="SET NULL")
    )
    group_key: Mapped[str] = mapped_column(String(200), index=True)
    prompt_text: Mapped[str] = mapped_column(Text)
    prompt_token_ids: Mapped[list[Any] | None] = mapped_column(JSON)
    completion_text: Mapped[str] = mapped_column(Text)
    completion_token_ids: Mapped[list[Any] | None] = mapped_column(JSON)
    behavior_logprobs: Mapped[list[Any] | None] = mapped_column(JSON)
    temperature: Mapped[float | None] = mapped_column(Float)
    top_p: Mapped[float | None] = mapped_column(Float)
    top_k: Mapped[int | None] = mapped_column(Integer)
    sampler: Mapped[str] = mapped_column(String(100))  # transformers | vllm | openai | mutation
    policy_version: Mapped[int | None] = mapped_column(
        ForeignKey("policy_checkpoints.id", ondelete="SET NULL")
    )  # NULL = the untrained base policy
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Evaluation(Base):
    """One execution of a workflow on a problem: unique per (workflow, problem, repeat)."""

    __tablename__ = "evaluations"
    __table_args__ = (
        UniqueConstraint("workflow_id", "problem_id", "repeat"),
        Index("ix_evaluations_run_id_workflow_id", "run_id", "workflow_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    workflow_id: Mapped[int] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"))
    problem_id: Mapped[int] = mapped_column(ForeignKey("problems.id", ondelete="CASCADE"), index=True)
    repeat: Mapped[int] = mapped_column(Integer, default=0)
    reward: Mapped[float] = mapped_column(Float)
    answer: Mapped[str | None] = mapped_column(Text)  # extracted answer that was scored
    output: Mapped[str | None] = mapped_column(Text)  # raw workflow output (truncated)
    error_kind: Mapped[str | None] = mapped_column(String(40))  # invalid|timeout|memory|crash|...
    error_message: Mapped[str | None] = mapped_column(Text)
    cost: Mapped[float | None] = mapped_column(Float)  # USD; NULL = unknown price
    latency_s: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SearchNode(Base):
    """MCTS node: one workflow in one run's tree."""

    __tablename__ = "search_nodes"
    __table_args__ = (UniqueConstraint("run_id", "workflow_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    workflow_id: Mapped[int] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"))
    parent_node_id: Mapped[int | None] = mapped_column(ForeignKey("search_nodes.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(Integer, default=0)
    depth: Mapped[int] = mapped_column(Integer, default=0)
    visits: Mapped[int] = mapped_column(Integer, default=0)
    value_sum: Mapped[float] = mapped_column(Float, default=0.0)
    prior: Mapped[float | None] = mapped_column(Float)
    expanded: Mapped[bool] = mapped_column(Boolean, default=False)  # expansions > 0
    # How many times the node was expanded (selection reads it). Stored because an expansion whose
    # children were all duplicates adds no child row, so it cannot be derived from the children.
    expansions: Mapped[int] = mapped_column(Integer, default=0, server_default=sql_text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrainStep(Base):
    """One optimizer step of the learner with its namespaced metrics (docs/design.md rule 10)."""

    __tablename__ = "train_steps"
    __table_args__ = (UniqueConstraint("run_id", "round", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("policy_checkpoints.id", ondelete="SET NULL"))
    round: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
