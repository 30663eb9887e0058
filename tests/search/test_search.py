"""The search driver on calc: budget accounting, determinism, improvement, eval, and SIGKILL resume."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select

from search.config import SearchConfig, SearchConfigError
from storage.engine import open_db, session_scope
from storage.models import Evaluation, Problem, Run, SearchNode
from tests.helpers.reliability import evaluation_set
from workflow_rl.loop.search_run import run_search

SMALL = {"batch_size": 12, "children": 3, "budget": 300}


def _search(db: str, name: str, **kw):
    return asyncio.run(run_search(db, name, SearchConfig(**{**SMALL, **kw}), workers=1))


def _evaluations(db: str, run_name: str) -> list[tuple]:
    return evaluation_set(open_db(db), run_name)


def test_config_validation_states_value_and_fix():
    with pytest.raises(SearchConfigError, match=r"budget=-5 is invalid: use a non-negative"):
        SearchConfig(budget=-5)
    with pytest.raises(SearchConfigError, match=r"children=0 is invalid: children must be >= 1"):
        SearchConfig(children=0)
    with pytest.raises(SearchConfigError, match=r"selection='best' is invalid: choose one of"):
        SearchConfig(selection="best")
    stored = SearchConfig(seed=7, children=2).to_dict()
    resumed = SearchConfig(seed=1, children=5, budget=99).resumed_from(stored)
    assert (resumed.seed, resumed.children, resumed.budget) == (7, 2, 99)  # tree fields kept, budget new


def test_budget_accounting_and_persistence(sqlite_url):
    result = _search(sqlite_url, "budget")
    p = result.progress
    # every node was evaluated once on a 12-problem batch: evaluations = 12 x nodes, all stored
    assert p.evaluations == 12 * p.nodes
    assert len(_evaluations(sqlite_url, "budget")) == p.evaluations == p.executed
    # the budget is a hard bound: the search stops when not one more 12-problem child fits
    assert 300 - 12 < p.evaluations <= 300 and result.stop_reason == "budget"
    with session_scope(open_db(sqlite_url)) as session:
        run = session.scalars(select(Run).where(Run.name == "budget")).one()
        assert run.status == "done" and run.state["evaluations"] == p.evaluations
        assert session.scalar(select(func.count()).select_from(SearchNode)) == p.nodes
        visits = session.scalars(select(SearchNode.visits).where(SearchNode.parent_node_id.is_(None))).all()
    assert sum(visits) == 2 + p.simulations  # 2 seeds with 1 visit each, + 1 per back-propagation
    capped = _search(sqlite_url, "sims", max_simulations=3, budget=0)
    assert capped.progress.simulations == 3 and capped.stop_reason == "max_simulations"


def test_fixed_seed_gives_the_same_tree(sqlite_url):
    a = _search(sqlite_url, "golden-a", seed=3)
    b = _search(sqlite_url, "golden-b", seed=3)
    c = _search(sqlite_url, "golden-c", seed=4)
    assert a.tree.snapshot() == b.tree.snapshot()
    assert len(a.tree.snapshot()) > 10
    assert a.tree.snapshot() != c.tree.snapshot()
    assert _evaluations(sqlite_url, "golden-a") == _evaluations(sqlite_url, "golden-b")


def test_default_search_improves_on_seeds_and_eval_reports_test_score(sqlite_url):
    result = asyncio.run(run_search(sqlite_url, "default", SearchConfig(), workers=2))
    seeds, best = result.seed_best_score, result.progress.best_score
    assert best >= seeds + 0.15, (seeds, best)  # seeds score 0.233 on validation
    env = {**os.environ, "WORKFLOW_RL_DB": sqlite_url}
    wid = result.progress.best_workflow_id
    out = subprocess.run([sys.executable, "-c", "from workflow_rl.cli import main; main()", "eval", str(wid),
                          "--split", "test", "--workers", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"workflow #{wid} on test: mean reward" in out.stdout
    with session_scope(open_db(sqlite_url)) as session:
        test_rows = session.scalars(
            select(Evaluation.reward).join(Problem, Problem.id == Evaluation.problem_id)
            .where(Evaluation.workflow_id == wid, Problem.split == "test")).all()
    assert len(test_rows) == 100
    assert f"mean reward {sum(test_rows) / 100:.3f}" in out.stdout


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(db_url):
    kw = {"batch_size": 15, "children": 3, "budget": 1000, "seed": 5}
    reference = _search(db_url, "reference", **kw)
    args = [sys.executable, "-c", "from workflow_rl.cli import main; main()", "--db", db_url, "search",
            "--run", "killed", "--budget", "1000", "--batch-size", "15", "--children", "3", "--seed", "5",
            "--workers", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    engine = open_db(db_url)
    deadline = time.monotonic() + 120
    killed_at = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            with session_scope(engine) as session:
                run = session.scalars(select(Run).where(Run.name == "killed")).one_or_none()
                done = run is not None and (run.state or {}).get("next_simulation", 0)
            if done and done >= 3:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = done
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and killed_at is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert killed_at is not None, proc.stderr.read().decode()[-2000:]
    with session_scope(engine) as session:
        run = session.scalars(select(Run).where(Run.name == "killed")).one()
        assert run.status == "running" and run.state["next_simulation"] < reference.progress.simulations + 1
    resumed = _search(db_url, "killed", **{**kw, "children": 2})  # tree settings come from the stored run
    assert resumed.resume_notes == ("children=3 kept from the stored run (asked 2)",)
    assert resumed.tree.snapshot() == reference.tree.snapshot()
    assert resumed.progress.evaluations == reference.progress.evaluations
    # nothing lost or duplicated: the stored evaluations are exactly the reference run's
    assert _evaluations(db_url, "killed") == _evaluations(db_url, "reference")
    assert resumed.progress.executed < reference.progress.executed  # stored rows were not re-run
