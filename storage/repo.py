"""Repository functions: every read and write the drivers need, each taking a Session.

None of them commits: the caller owns the transaction (``session_scope``), so several calls form one
atomic unit. Inserts that can race with another process (workflows, evaluations, search nodes) use
the dialect's ``INSERT ... ON CONFLICT DO NOTHING`` and then read the winning row, so they are
idempotent on resume and safe under concurrent writers on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Insert, Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from storage.models import (
    WORKFLOW_SOURCES,
    Evaluation,
    Generation,
    PolicyCheckpoint,
    Problem,
    Run,
    SearchNode,
    TrainStep,
    Workflow,
    utcnow,
)

_CHUNK = 500  # keys per IN (...) list: far below every backend's bound-parameter limit

EVALUATION_COLUMNS: tuple[str, ...] = tuple(c.name for c in Evaluation.__table__.columns if c.name != "id")
"""Columns a bulk evaluation row may carry (``run_id, workflow_id, problem_id, reward`` are required)."""

_EVALUATION_DEFAULTS: dict[str, Any] = {
    "repeat": 0, "answer": None, "output": None, "error_kind": None, "error_message": None,
    "cost": None, "latency_s": None, "prompt_tokens": 0, "completion_tokens": 0,
}


def code_hash(code: str) -> str:
    """Default workflow code hash: SHA-256 of the exact source text (hex)."""
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def _insert_ignore(session: Session, table: Table, conflict_cols: Sequence[str]) -> Insert:
    """``INSERT ... ON CONFLICT (cols) DO NOTHING`` for the session's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(conflict_cols))
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=list(conflict_cols))
    raise NotImplementedError(f"idempotent inserts are implemented for sqlite and postgresql, not {dialect}")


# --- runs -------------------------------------------------------------------------------------


def find_run(session: Session, name: str) -> Run | None:
    """The run called ``name``, or None."""
    return session.scalars(select(Run).where(Run.name == name)).one_or_none()


def get_or_create_run(
    session: Session, name: str, benchmark: str, *, kind: str = "search", config: dict[str, Any] | None = None
) -> Run:
    """The run called ``name``; created (with ``benchmark``, ``kind``, ``config``) if it does not exist."""
    stmt = _insert_ignore(session, Run.__table__, ["name"]).values(
        name=name, benchmark=benchmark, kind=kind, status="running", config=config or {}, state={},
        created_at=utcnow(), updated_at=utcnow(),
    )
    session.execute(stmt)
    run = find_run(session, name)
    assert run is not None  # inserted above or by a concurrent writer
    return run


def list_runs(session: Session) -> list[Run]:
    """All runs, oldest first."""
    return list(session.scalars(select(Run).order_by(Run.id)))


# --- problems ---------------------------------------------------------------------------------


def _field(item: Any, name: str, default: Any = None) -> Any:
    if isinstance(item, Mapping):
        return item.get(name, default)
    return getattr(item, name, default)


def upsert_problems(session: Session, benchmark: str, problems: Iterable[Any]) -> dict[str, int]:
    """Insert or update problems of ``benchmark`` by key; returns ``{key: problem id}``.

    Each item is a mapping or an object (e.g. ``BenchProblem``) with ``key, split, text, reference``
    and optional ``meta``. Changed text/split/reference/meta of an existing key are updated. Safe
    against a concurrent writer inserting the same keys (INSERT ... ON CONFLICT DO NOTHING first).
    """
    values = {
        str(_field(p, "key")): {
            "split": _field(p, "split"), "text": _field(p, "text"),
            "reference": _field(p, "reference"), "meta": dict(_field(p, "meta") or {}),
        }
        for p in problems
    }
    if not values:
        return {}
    stmt = _insert_ignore(session, Problem.__table__, ["benchmark", "key"])
    session.connection().execute(stmt, [{"benchmark": benchmark, "key": k, **v} for k, v in values.items()])
    keys = list(values)
    ids: dict[str, int] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        for row in session.scalars(select(Problem).where(Problem.benchmark == benchmark, Problem.key.in_(chunk))):
            ids[row.key] = row.id
            for name, value in values[row.key].items():
                if getattr(row, name) != value:  # an existing key whose content changed
                    setattr(row, name, value)
    session.flush()
    return {key: ids[key] for key in keys}


def problem_ids(session: Session, benchmark: str, split: str | None = None) -> dict[str, int]:
    """``{key: id}`` of the stored problems of ``benchmark`` (optionally one split)."""
    stmt = select(Problem.key, Problem.id).where(Problem.benchmark == benchmark)
    if split is not None:
        stmt = stmt.where(Problem.split == split)
    return {key: pid for key, pid in session.execute(stmt)}


# --- workflows and generations ----------------------------------------------------------------


def add_workflow(session: Session, run_id: int, code: str, source: str, **fields: Any) -> Workflow:
    """Store a workflow, or return the existing row with the same (run, code hash).

    ``fields`` are other ``Workflow`` columns (code_hash, graph_hash, parent_id, round, checkpoint_id,
    valid, error). ``code_hash`` defaults to :func:`code_hash` of ``code``. An existing row is returned
    unchanged (first writer wins), so callers can tell a duplicate by comparing provenance.
    """
    if source not in WORKFLOW_SOURCES:
        raise ValueError(f"workflow source {source!r} is not one of {WORKFLOW_SOURCES}")
    digest = fields.pop("code_hash", None) or code_hash(code)
    values = {"round": 0, "valid": True, "created_at": utcnow(), **fields}
    stmt = _insert_ignore(session, Workflow.__table__, ["run_id", "code_hash"]).values(
        run_id=run_id, code=code, code_hash=digest, source=source, **values
    )
    session.execute(stmt)
    return session.scalars(
        select(Workflow).where(Workflow.run_id == run_id, Workflow.code_hash == digest)
    ).one()


def get_workflow(session: Session, workflow_id: int) -> Workflow | None:
    """The workflow with this id, or None."""
    return session.get(Workflow, workflow_id)


def workflow_lineage(session: Session, workflow_id: int, *, max_depth: int = 1000) -> list[Workflow]:
    """The parent chain: ``[workflow, parent, grandparent, ...]`` (stops at a cycle or ``max_depth``)."""
    chain: list[Workflow] = []
    seen: set[int] = set()
    current = session.get(Workflow, workflow_id)
    while current is not None and current.id not in seen and len(chain) < max_depth:
        chain.append(current)
        seen.add(current.id)
        current = session.get(Workflow, current.parent_id) if current.parent_id is not None else None
    return chain


def add_generation(session: Session, **fields: Any) -> Generation:
    """Store a generation record (the exact sampler output for one workflow); returns it with its id."""
    generation = Generation(**fields)
    session.add(generation)
    session.flush()
    return generation


def generations_for(session: Session, workflow_id: int) -> list[Generation]:
    """The generation rows that produced ``workflow_id`` (usually zero or one)."""
    return list(session.scalars(select(Generation).where(Generation.workflow_id == workflow_id)))


# --- evaluations ------------------------------------------------------------------------------


def bulk_insert_evaluations(session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert many evaluation rows in one executemany; rows already stored are skipped.

    Each row needs ``run_id, workflow_id, problem_id, reward``; other columns default (repeat 0).
    A (workflow_id, problem_id, repeat) that exists is left as it is (ON CONFLICT DO NOTHING), so
    re-inserting after a crash is idempotent. Goes through Core, not the ORM unit of work: this is
    the hot path of search (thousands of rows per transaction).
    """
    if not rows:
        return
    unknown = set(rows[0]) - set(EVALUATION_COLUMNS)
    if unknown:
        raise ValueError(f"unknown evaluation columns {sorted(unknown)}; allowed: {EVALUATION_COLUMNS}")
    missing = {"run_id", "workflow_id", "problem_id", "reward"} - set(rows[0])
    if missing:
        raise ValueError(f"evaluation rows need {sorted(missing)}")
    defaults = {**_EVALUATION_DEFAULTS, "created_at": utcnow()}
    stmt = _insert_ignore(session, Evaluation.__table__, ["workflow_id", "problem_id", "repeat"])
    conn = session.connection()
    if conn.dialect.name != "sqlite":
        conn.execute(stmt, [{**defaults, **row} for row in rows])
        return
    # SQLite: SQLAlchemy's per-row parameter processing costs more than SQLite's insert itself, so
    # compile the same Core statement once and hand positional tuples to the driver's executemany.
    compiled = stmt.compile(dialect=conn.dialect, column_keys=list(EVALUATION_COLUMNS))
    order = list(compiled.positiontup or [])
    processors = {
        name: proc for name in order
        if (proc := Evaluation.__table__.c[name].type.dialect_impl(conn.dialect).bind_processor(conn.dialect))
        is not None
    }
    for name, proc in processors.items():  # e.g. DateTime -> ISO text, once for the shared default
        if name in defaults:
            defaults[name] = proc(defaults[name])
    given_processed = [(order.index(n), p) for n, p in processors.items() if n in rows[0]]
    getter = itemgetter(*order)
    params = [getter({**defaults, **row}) for row in rows]
    if given_processed:  # values the caller passed for columns that need conversion (e.g. to float)
        params = [_apply(values, given_processed) for values in params]
    conn.exec_driver_sql(str(compiled), params)


def _apply(values: tuple[Any, ...], processed: list[tuple[int, Any]]) -> tuple[Any, ...]:
    out = list(values)
    for index, proc in processed:
        out[index] = proc(out[index])
    return tuple(out)


def stored_evaluations(
    session: Session, workflow_id: int, problem_ids: Iterable[int] | None = None
) -> dict[tuple[int, int], Evaluation]:
    """Stored evaluations of one workflow, keyed by ``(problem_id, repeat)`` (optionally some problems)."""
    stmt = select(Evaluation).where(Evaluation.workflow_id == workflow_id)
    if problem_ids is None:
        return {(e.problem_id, e.repeat): e for e in session.scalars(stmt)}
    wanted = list(problem_ids)
    found: dict[tuple[int, int], Evaluation] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk_stmt = stmt.where(Evaluation.problem_id.in_(wanted[start : start + _CHUNK]))
        found.update({(e.problem_id, e.repeat): e for e in session.scalars(chunk_stmt)})
    return found


def workflow_scores(session: Session, workflow_id: int) -> list[dict[str, Any]]:
    """Per split: mean reward, evaluation count, distinct problems and total cost of one workflow."""
    stmt = (
        select(
            Problem.split,
            func.avg(Evaluation.reward),
            func.count(Evaluation.id),
            func.count(func.distinct(Evaluation.problem_id)),
            func.sum(Evaluation.cost),
        )
        .join(Problem, Problem.id == Evaluation.problem_id)
        .where(Evaluation.workflow_id == workflow_id)
        .group_by(Problem.split)
        .order_by(Problem.split)
    )
    return [
        {"split": split, "mean_reward": mean, "n_evaluations": n, "n_problems": n_problems, "total_cost": cost}
        for split, mean, n, n_problems, cost in session.execute(stmt)
    ]


# --- search nodes -----------------------------------------------------------------------------


def upsert_search_node(
    session: Session,
    run_id: int,
    workflow_id: int,
    *,
    parent_node_id: int | None = None,
    round: int = 0,
    depth: int = 0,
    prior: float | None = None,
) -> SearchNode:
    """The node of ``workflow_id`` in run ``run_id``'s tree; created with these fields if missing."""
    stmt = _insert_ignore(session, SearchNode.__table__, ["run_id", "workflow_id"]).values(
        run_id=run_id, workflow_id=workflow_id, parent_node_id=parent_node_id, round=round, depth=depth,
        prior=prior, visits=0, value_sum=0.0, expanded=False, created_at=utcnow(),
    )
    session.execute(stmt)
    return session.scalars(
        select(SearchNode).where(SearchNode.run_id == run_id, SearchNode.workflow_id == workflow_id)
    ).one()


def update_search_node(
    session: Session,
    node_id: int,
    *,
    add_visits: int = 0,
    add_value: float = 0.0,
    expanded: bool | None = None,
    prior: float | None = None,
) -> None:
    """Back-propagate into a node in SQL (``visits += add_visits``, ``value_sum += add_value``).

    Increments are applied by the database, so two writers never lose each other's updates.
    """
    values: dict[str, Any] = {}
    if add_visits:
        values["visits"] = SearchNode.visits + add_visits
    if add_value:
        values["value_sum"] = SearchNode.value_sum + add_value
    if expanded is not None:
        values["expanded"] = expanded
    if prior is not None:
        values["prior"] = prior
    if values:
        session.execute(
            update(SearchNode).where(SearchNode.id == node_id).values(**values),
            execution_options={"synchronize_session": False},
        )
        cached = session.identity_map.get(identity_key(SearchNode, node_id))
        if cached is not None:  # the ORM copy is stale now; reload on next access
            session.expire(cached, list(values))


def search_nodes(session: Session, run_id: int) -> list[SearchNode]:
    """All nodes of one run's tree, in creation order (parents before children)."""
    return list(session.scalars(select(SearchNode).where(SearchNode.run_id == run_id).order_by(SearchNode.id)))


# --- learner ----------------------------------------------------------------------------------


def add_checkpoint(
    session: Session, path: str, base_model: str, *, run_id: int | None = None, round: int = 0,
    step: int = 0, metrics: dict[str, Any] | None = None,
) -> PolicyCheckpoint:
    """Register a saved policy checkpoint (write it to disk completely before calling this)."""
    checkpoint = PolicyCheckpoint(
        path=path, base_model=base_model, run_id=run_id, round=round, step=step, metrics=metrics or {}
    )
    session.add(checkpoint)
    session.flush()
    return checkpoint


def latest_checkpoint(session: Session, run_id: int | None = None) -> PolicyCheckpoint | None:
    """The newest checkpoint (of one run, if given), or None."""
    stmt = select(PolicyCheckpoint).order_by(PolicyCheckpoint.id.desc()).limit(1)
    if run_id is not None:
        stmt = stmt.where(PolicyCheckpoint.run_id == run_id)
    return session.scalars(stmt).first()


def add_train_step(
    session: Session, run_id: int, step: int, metrics: dict[str, Any], *, round: int = 0,
    checkpoint_id: int | None = None,
) -> TrainStep:
    """Record one optimizer step's metrics; a repeated (run, round, step) after resume replaces them."""
    row = session.scalars(
        select(TrainStep).where(TrainStep.run_id == run_id, TrainStep.round == round, TrainStep.step == step)
    ).one_or_none()
    if row is None:
        row = TrainStep(run_id=run_id, round=round, step=step, metrics=dict(metrics), checkpoint_id=checkpoint_id)
        session.add(row)
    else:
        row.metrics = dict(metrics)
        row.checkpoint_id = checkpoint_id
    session.flush()
    return row
