"""Driver rules with a fixed proposer: invalid and duplicate children, provenance, early stop, selections."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from search.base import Candidate, Generation, ProposalContext
from search.config import SearchConfig
from search.search import BenchmarkInfo, Search
from search.tree import load_tree
from storage.engine import open_db, session_scope
from storage.models import Evaluation, SearchNode, Workflow
from storage.models import Generation as GenerationRow
from workflow_rl.loop.evaluation import BenchmarkEvaluator
from workflow_rl.loop.search_run import run_search
from workflow_rl.tasks import get_benchmark

SEED = """async def solve(problem, ops):
    expression = await ops.extract_expression(problem)
    return await ops.calculate(expression)
"""
RENAMED = SEED.replace("    expression =", "    value =").replace("(expression)", "(value)")  # same graph hash
INVALID = "import os\n" + SEED
LINEAR = """async def solve(problem, ops):
    if '=' in problem:
        return await ops.solve_equation(await ops.extract_equation(problem))
    return await ops.calculate(await ops.extract_expression(problem))
"""


class FixedProposer:
    """Proposes the same programs every time (a Proposer protocol implementation for tests)."""

    name = "fixed"

    def __init__(self, codes: list[str]):
        self.codes = codes
        self.contexts: list[ProposalContext] = []

    async def propose(self, context: ProposalContext, n: int, seed: int) -> list[Candidate]:
        self.contexts.append(context)
        gen = Generation(prompt_text="p", completion_text="c", sampler="test")
        return [Candidate(code=c, source="llm", prior=float(i + 1), generation=gen, description=f"#{i}")
                for i, c in enumerate(self.codes[:n])]


async def _run(db: str, proposer, run: str = "fixed", on_progress=None, **kw):
    engine = open_db(db)
    bench = get_benchmark("calc")
    info = BenchmarkInfo(bench.name, bench.description, bench.operator_names, {"calculate": SEED})
    config = SearchConfig(**{"batch_size": 10, "children": 4, "budget": 0, "max_simulations": 2, **kw})
    async with BenchmarkEvaluator(engine, bench, workers=1) as evaluator:
        return await Search(engine, config, info, evaluator, proposer).run(run, on_progress)


def _stored_tree(db: str, run_id: int):
    with session_scope(open_db(db)) as session:
        return load_tree(session, run_id)


def test_invalid_and_duplicate_children(sqlite_url):
    proposer = FixedProposer([INVALID, RENAMED, SEED, LINEAR])
    result = asyncio.run(_run(sqlite_url, proposer, max_simulations=1))
    tree = result.tree
    assert len(tree) - 1 == 2  # the seed and LINEAR; the invalid one and both duplicates make no node
    with session_scope(open_db(sqlite_url)) as session:
        bad = session.scalars(select(Workflow).where(Workflow.valid.is_(False))).one()
        assert bad.code == INVALID and "import" in bad.error and bad.source == "llm"
        assert session.scalar(select(func.count()).select_from(Evaluation).where(Evaluation.workflow_id == bad.id)) == 0
        renamed = session.scalars(select(Workflow).where(Workflow.code == RENAMED)).one_or_none()
        assert renamed is None  # a graph-hash duplicate is not stored again
        linear = session.scalars(select(Workflow).where(Workflow.code == LINEAR)).one()
        assert linear.parent_id == tree.workflow_id[1] and linear.round == 1
        gen = session.scalars(select(GenerationRow).where(GenerationRow.workflow_id == linear.id)).one()
        assert gen.sampler == "test" and gen.parent_workflow_id == tree.workflow_id[1]
        assert session.scalar(select(func.count()).select_from(Evaluation)) == 20  # seed + LINEAR, 10 each
    seed_score, linear_score = tree.own_score[1], tree.own_score[2]
    assert linear_score > seed_score
    # backed-up value (max backup) is the best child reward: invalid 0, duplicates = seed score
    assert tree.q(1) == pytest.approx(max(seed_score, linear_score))
    assert tree.prior[2] == 4.0 and result.progress.evaluations == 20
    ctx = proposer.contexts[0]
    assert ctx.parent_code == SEED and ctx.parent_score == seed_score and ctx.failures and ctx.passes
    assert all(f.produced is None or f.expected != f.produced for f in ctx.failures)


def test_mean_backup_averages_children(sqlite_url):
    result = asyncio.run(_run(sqlite_url, FixedProposer([INVALID, LINEAR]), max_simulations=1, backup="mean"))
    tree = result.tree
    # node 1: own score (1 visit) + mean of children rewards [0 (invalid), LINEAR]
    expected = (tree.own_score[1] + (0.0 + tree.own_score[2]) / 2) / 2
    assert tree.visits[1] == 2 and tree.q(1) == pytest.approx(expected)


def test_early_stop_when_top_k_is_unchanged(sqlite_url):
    result = asyncio.run(_run(sqlite_url, FixedProposer([RENAMED]), max_simulations=50, patience=3))
    assert result.stop_reason == "converged" and result.progress.simulations == 3


@pytest.mark.parametrize("selection", ["puct", "aflow", "random"])
def test_other_selections_run_and_persist(sqlite_url, selection):
    config = SearchConfig(selection=selection, batch_size=8, children=2, budget=0, max_simulations=3)
    result = asyncio.run(run_search(sqlite_url, selection, config, workers=1))
    assert result.progress.simulations == 3
    with session_scope(open_db(sqlite_url)) as session:
        assert session.scalar(select(func.count()).select_from(SearchNode)) == result.progress.nodes


def test_all_duplicate_expansions_survive_save_and_load(sqlite_url):
    """Every expansion's children are duplicates of the seed: no child row, yet 3 expansions stored."""
    result = asyncio.run(_run(sqlite_url, FixedProposer([RENAMED, SEED]), max_simulations=3))
    tree = result.tree
    assert len(tree) - 1 == 1 and tree.expansions[1] == 3  # only the seed; expanded 3 times
    stored = _stored_tree(sqlite_url, result.run_id)
    assert stored.expansions[1] == 3 and stored.snapshot() == tree.snapshot()
    with session_scope(open_db(sqlite_url)) as session:
        node = session.scalars(select(SearchNode)).one()
        assert (node.expansions, node.expanded, node.visits) == (3, True, 4)  # 1 own + 3 back-ups


class Crash(Exception):
    """Raised from the progress callback: the process dies right after a committed simulation."""


def test_resume_after_all_duplicate_expansion_equals_uninterrupted(sqlite_url):
    """One new child, then expansions made only of duplicates; a crash and resume keeps their count."""
    codes = [RENAMED, LINEAR, SEED]  # sim 1 on the seed adds LINEAR; later expansions add nothing new
    reference = asyncio.run(_run(sqlite_url, FixedProposer(codes), run="reference", max_simulations=4,
                                 children=3))
    assert sum(reference.tree.expansions) == 4 and len(reference.tree) - 1 == 2

    def crash_after_two(progress):
        if progress.simulations == 2:
            raise Crash

    with pytest.raises(Crash):
        asyncio.run(_run(sqlite_url, FixedProposer(codes), run="crashed", on_progress=crash_after_two,
                         max_simulations=4, children=3))
    resumed = asyncio.run(_run(sqlite_url, FixedProposer(codes), run="crashed", max_simulations=4, children=3))
    assert resumed.tree.snapshot() == reference.tree.snapshot()
    assert _stored_tree(sqlite_url, resumed.run_id).snapshot() == reference.tree.snapshot()
