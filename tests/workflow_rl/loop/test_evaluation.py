"""BenchmarkEvaluator: sandboxed runs scored by the benchmark, stored once per (workflow, problem, repeat)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from storage.engine import open_db, session_scope
from storage.models import Evaluation
from storage.repo import add_workflow, get_or_create_run
from workflow_rl.errors import WorkflowRLError
from workflow_rl.loop.evaluation import BenchmarkEvaluator
from workflow_rl.tasks import get_benchmark

SEED = """async def solve(problem, ops):
    expression = await ops.extract_expression(problem)
    return await ops.calculate(expression)
"""
CRASH = """async def solve(problem, ops):
    return await ops.solve_equation(problem)
"""


async def _evaluate(db: str, code: str, split: str = "validation", repeats: int = 1, first: int = 10):
    engine = open_db(db)
    async with BenchmarkEvaluator(engine, get_benchmark("calc"), workers=1) as evaluator:
        with session_scope(engine) as session:
            run = get_or_create_run(session, "eval-test", "calc")
            workflow = add_workflow(session, run.id, code, "seed")
            run_id, wid = run.id, workflow.id
        ids = evaluator.problem_ids(split)[:first]
        first_pass = await evaluator.evaluate(run_id, wid, code, ids, repeats)
        second_pass = await evaluator.evaluate(run_id, wid, code, ids, repeats)
        problems = {p.problem_id: p for p in evaluator.validation_problems()}
    return first_pass, second_pass, wid, ids, problems


def test_evaluate_scores_stores_and_reuses(sqlite_url):
    first, second, wid, ids, _ = asyncio.run(_evaluate(sqlite_url, SEED, repeats=2))
    assert first.executed == 20 and second.executed == 0
    assert first.records == second.records  # stored rows come back unchanged
    assert [(r.problem_id, r.repeat) for r in first.records] == [(pid, k) for pid in ids for k in range(2)]
    for record in first.records:
        assert record.reward in (0.0, 1.0)
        assert (record.error is None) == (record.reward == 1.0)  # unsolved rows say why
    with session_scope(open_db(sqlite_url)) as session:
        n = session.scalar(select(func.count()).select_from(Evaluation).where(Evaluation.workflow_id == wid))
        kinds = set(session.scalars(select(Evaluation.error_kind).where(Evaluation.workflow_id == wid)))
    assert n == 20 and kinds <= {None, "wrong_answer", "operator_error"}


def test_operator_failures_are_rows_not_exceptions(sqlite_url):
    first, _, wid, ids, _ = asyncio.run(_evaluate(sqlite_url, CRASH, first=5))
    assert len(first.records) == 5 and first.mean_reward < 1.0
    assert {r.error for r in first.records if r.reward == 0} <= {"operator_error", "wrong_answer"}


def test_full_validation_score_of_the_seed(sqlite_url):
    first, _, _, ids, _ = asyncio.run(_evaluate(sqlite_url, SEED, first=60))
    assert len(ids) == 60 and first.mean_reward == pytest.approx(14 / 60)  # calc docs: 0.233


def test_unknown_problem_ids_are_refused(sqlite_url):
    async def go():
        engine = open_db(sqlite_url)
        async with BenchmarkEvaluator(engine, get_benchmark("calc"), workers=1) as evaluator:
            with session_scope(engine) as session:
                run = get_or_create_run(session, "x", "calc")
                wid, rid = add_workflow(session, run.id, SEED, "seed").id, run.id
            await evaluator.evaluate(rid, wid, SEED, [10**6], 1)

    with pytest.raises(WorkflowRLError, match="not problems of 'calc'"):
        asyncio.run(go())
