"""The promotion check (SearchConfig.promote, search/promotion.py) on calc: seeds and every best node are
scored on the whole validation split, other nodes on their batch; evaluations are counted and bounded."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from search.config import SearchConfig
from search.promotion import wants_promotion
from search.tree import Tree
from storage.engine import open_db, session_scope
from storage.models import Evaluation, Problem
from workflow_rl.cli.search import run_search

VALIDATION = 60  # calc's default validation split


def _search(db: str, name: str, **kw):
    config = SearchConfig(**{"batch_size": 12, "children": 3, "promote": True, **kw})
    return asyncio.run(run_search(db, name, config, workers=1))


def _rows(db: str, run_id: int) -> dict[int, int]:
    """Stored validation evaluations per workflow of the run."""
    counts: dict[int, int] = {}
    with session_scope(open_db(db)) as session:
        for wid in session.scalars(select(Evaluation.workflow_id).join(Problem, Problem.id == Evaluation.problem_id)
                                   .where(Evaluation.run_id == run_id, Problem.split == "validation")):
            counts[wid] = counts.get(wid, 0) + 1
    return counts


def test_wants_promotion_only_for_a_child_that_beats_the_best_on_a_partial_batch():
    tree = Tree()
    tree.add_node(0, 1, "a", 0.5, 0)
    config = SearchConfig(promote=True)
    assert wants_promotion(config, tree, 1, 0.6, 12, 60)
    assert not wants_promotion(config, tree, 1, 0.5, 12, 60)  # a tie does not replace the best
    assert not wants_promotion(config, tree, 1, 0.6, 60, 60)  # already scored on the whole split
    assert not wants_promotion(config, tree, None, 0.6, 12, 60)  # seeds are scored on the whole split
    assert not wants_promotion(SearchConfig(), tree, 1, 0.9, 12, 60)  # off by default


def test_best_nodes_are_scored_on_the_whole_split_and_counted(sqlite_url):
    result = _search(sqlite_url, "p", budget=600)
    tree, rows = result.tree, _rows(sqlite_url, result.run_id)
    seeds = tree.children[0]
    assert all(rows[tree.workflow_id[i]] == VALIDATION for i in seeds)
    assert result.progress.evaluations == sum(rows.values()) == result.progress.executed <= 600
    best = tree.best()
    assert rows[tree.workflow_id[best]] == VALIDATION  # the best was confirmed on all 60 problems
    assert result.progress.best_score > result.seed_best_score
    promoted = [i for i in range(1, len(tree)) if i not in seeds and rows[tree.workflow_id[i]] == VALIDATION]
    screened = [i for i in range(1, len(tree)) if rows[tree.workflow_id[i]] == 12]
    assert promoted and screened and len(promoted) + len(screened) + len(seeds) == len(tree) - 1
    # every promoted node beat the best of its time on its batch; its score is its whole-split mean
    for i in promoted:
        assert tree.own_score[i] is not None and tree.own_score[i] <= 1.0


def test_a_promotion_that_does_not_fit_the_budget_stops_the_search_within_it(sqlite_url):
    # seeds 120, then 30 left: a child's batch (12) fits but not with room for its promotion (48): nothing runs
    first = _search(sqlite_url, "cut", budget=150)
    rows = _rows(sqlite_url, first.run_id)
    assert first.stop_reason == "budget" and first.progress.evaluations == sum(rows.values()) == 120
    resumed = _search(sqlite_url, "cut", budget=400)
    rows = _rows(sqlite_url, resumed.run_id)
    assert resumed.progress.evaluations == sum(rows.values()) <= 400
    assert resumed.progress.executed == sum(rows.values()) - first.progress.executed  # nothing ran twice
