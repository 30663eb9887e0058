"""Budgets as hard bounds (search.budget): the evaluation budget on calc, resume past a bound, and
the token/cost rule on hand-made counts. Token and cost budgets against an LLM endpoint are tested
end to end in tests/workflow_rl/llm/test_search_budgets.py."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from search.budget import COST, EVALUATIONS, TOKENS, Budget, Spent
from search.config import SearchConfig, SearchConfigError
from storage.engine import open_db, session_scope
from storage.models import Evaluation, Run, SearchNode
from workflow_rl.errors import WorkflowRLError
from workflow_rl.loop.search_run import run_search

SMALL = {"batch_size": 12, "children": 3}  # calc has 2 seeds: the seed simulation counts 24


def _search(db: str, name: str, **kw):
    return asyncio.run(run_search(db, name, SearchConfig(**{**SMALL, **kw}), workers=1))


def _stored(db: str, name: str) -> tuple[int, list[int]]:
    """(stored evaluation rows, simulation index of every node) of run ``name``."""
    with session_scope(open_db(db)) as session:
        run_id = session.scalars(select(Run.id).where(Run.name == name)).one()
        rows = session.scalar(select(func.count()).select_from(Evaluation).where(Evaluation.run_id == run_id))
        rounds = session.scalars(select(SearchNode.round).where(SearchNode.run_id == run_id)).all()
    return rows, list(rounds)


def test_evaluation_budget_is_never_overrun_and_a_resume_spends_only_the_difference(sqlite_url):
    # 24 (seeds) + 36 (one full expansion) = 60; the next expansion has room for one child of 12.
    # Before the bound was hard, that expansion evaluated all 3 children and ended at 96.
    first = _search(sqlite_url, "b", budget=72)
    rows, rounds = _stored(sqlite_url, "b")
    assert first.stop_reason == "budget"
    assert first.progress.evaluations == rows == first.progress.executed == 72
    assert rounds.count(max(rounds)) == 1  # the expansion the bound cut short kept the child it evaluated

    resumed = _search(sqlite_url, "b", budget=150)
    rows, rounds = _stored(sqlite_url, "b")
    assert resumed.stop_reason == "budget"
    assert 150 - 12 < resumed.progress.evaluations <= 150 and rows == resumed.progress.evaluations
    assert resumed.progress.executed == rows - 72  # nothing stored by the first command ran again
    assert resumed.progress.simulations > first.progress.simulations


def test_a_budget_smaller_than_the_seed_simulation_is_refused_before_anything_is_stored(sqlite_url):
    with pytest.raises(WorkflowRLError, match=r"budget=20 is smaller than the seed simulation .* = 24\): use --budget 24"):
        _search(sqlite_url, "tiny", budget=20)
    with session_scope(open_db(sqlite_url)) as session:
        assert session.scalar(select(func.count()).select_from(Run)) == 0


def test_budget_over_rule():
    spent = Spent(evaluations=10, tokens=900, cost=0.9, max_tokens=50, max_cost=0.05)
    assert Budget(evaluations=100).over(100, None, 12) is None  # exactly at the bound fits
    assert Budget(evaluations=100).over(101, None, 12) == EVALUATIONS
    assert Budget(tokens=1000).over(0, spent, 2) is None  # 900 + 2 x 50 = 1000
    assert Budget(tokens=1000).over(0, spent, 3) == TOKENS
    assert Budget(tokens=1000).over(0, spent, 0) is None  # all stored already: nothing new to pay
    assert Budget(cost=1.0).over(0, spent, 2) is None
    assert Budget(cost=1.0).over(0, spent, 3) == COST
    assert Budget(tokens=10).over(0, Spent(), 5) is None  # nothing measured yet: the probe measures
    with pytest.raises(SearchConfigError, match="unknown price"):
        Budget(cost=1.0).over(0, Spent(evaluations=3, unpriced=1, max_cost=0.1), 1)


def test_budget_options_are_validated():
    with pytest.raises(SearchConfigError, match=r"token_budget=-1 is invalid"):
        SearchConfig(token_budget=-1)
    with pytest.raises(SearchConfigError, match=r"cost_budget=nan is invalid"):
        SearchConfig(cost_budget=float("nan"))
    with pytest.raises(SearchConfigError, match="never stops"):
        SearchConfig(budget=0)
    assert SearchConfig(budget=0, token_budget=5).token_budget == 5  # a token bound alone stops a search
