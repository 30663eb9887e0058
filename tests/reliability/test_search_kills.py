"""Crash safety of ``workflow-rl search``: SIGKILL at seeded-random points, resume, compare.

One run is killed again and again (each restart resumes it) at points drawn from a seeded RNG
before it starts: most once the run has stored a chosen number of evaluation rows (spread over
the whole budget, so kills hit early and late simulations alike), a few at a time after launch
(while the database is opened, migrated, the problems upserted). Kill points are counted in stored
work, not seconds, so every planned kill lands before the run can finish on a fast machine too.
Then it is resumed to the end. It must equal an uninterrupted run with the same settings: the same
workflows, exactly the same (workflow, problem, repeat) evaluations (nothing lost, nothing twice)
and the same tree, including the expansion counts that selection reads.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from search.config import SearchConfig
from search.tree import load_tree
from storage.engine import open_db, session_scope
from storage.models import Run
from tests.helpers.reliability import (
    duplicate_evaluations,
    evaluation_count,
    evaluation_set,
    kill_group,
    run_cli,
    spawn,
    stays_alive,
    stderr_of,
    wait_until,
    workflow_set,
)
from workflow_rl.loop.search_run import run_search

# seed 12: its reference run has an expansion whose children were all duplicates (asserted below)
SETTINGS = {"budget": 1500, "batch_size": 8, "children": 3, "seed": 12}
KILLS = {"sqlite": 10, "postgres": 4}
"""Kills per backend (the search-resume logic is the same; PostgreSQL adds its own transactions)."""
LAUNCH_KILLS = {"sqlite": 3, "postgres": 1}
"""How many of those kills come at a time after launch rather than after stored rows."""
LAUNCH_WINDOW = 0.5
"""Launch kills happen only while fewer than this fraction of the budget is stored: the rest of
the run then takes far longer than the longest launch delay (1 s), whatever the machine."""
ROWS_WINDOW = 0.9
"""Row-count kill points lie below this fraction of the budget, so the run is always still busy."""


def _args(db: str, run: str) -> list[str]:
    return ["--db", db, "search", "--run", run, "--budget", str(SETTINGS["budget"]), "--batch-size",
            str(SETTINGS["batch_size"]), "--children", str(SETTINGS["children"]), "--seed",
            str(SETTINGS["seed"]), "--workers", "1"]


def _tree(engine, run: str) -> list[tuple]:
    with session_scope(engine) as s:
        run_id = s.query(Run.id).filter(Run.name == run).scalar()
        return load_tree(s, run_id).snapshot()


def kill_plan(rng: random.Random, kills: int, launch: int, budget: int) -> list[tuple[str, int, float]]:
    """``kills`` kill points in order, as (kind, rows, seconds): ``("rows", n, s)`` = once ``n``
    evaluation rows of the run are stored, ``s`` (0-50 ms: a fraction of a child's execution) more;
    ``("launch", 0, s)`` = ``s`` seconds after the process starts. Launch kills come before every
    row point at or above :data:`LAUNCH_WINDOW` of the budget."""
    rows = sorted(rng.sample(range(1, int(budget * ROWS_WINDOW)), kills - launch))
    early = [i for i, n in enumerate(rows) if n < budget * LAUNCH_WINDOW] or [0]
    plan = [("rows", n, rng.uniform(0.0, 0.05)) for n in rows]
    for _ in range(launch):
        # inserted at an early row point's index: everything before it is a row point below it
        plan.insert(rng.choice(early), ("launch", 0, rng.uniform(0.1, 1.0)))
    return plan


def _kill_chain(db: str, engine, run: str, plan: list[tuple[str, int, float]]) -> list[tuple[str, int]]:
    """Start ``run``'s search and SIGKILL it at each point of ``plan``; returns the kills as (kind,
    rows stored at the kill). A process that exits before its kill fails the test."""
    landed = []
    for kind, rows, delay in plan:
        proc = spawn(_args(db, run))
        try:
            alive = kind == "launch" or wait_until(lambda n=rows: evaluation_count(engine, run) >= n, proc, 120,
                                                   poll=0.01)
            alive = alive and stays_alive(proc, delay)
        finally:
            if proc.poll() is None:
                kill_group(proc)
            else:
                proc.wait()
        assert alive, f"the search exited before its kill ({kind}, {rows}, {delay:.2f}): {stderr_of(proc)[-3000:]}"
        landed.append((kind, evaluation_count(engine, run)))
    return landed


def test_kill_plan_is_seeded_ordered_and_within_the_windows():
    plan = kill_plan(random.Random(2026), 10, 3, 1500)
    assert plan == kill_plan(random.Random(2026), 10, 3, 1500)
    assert [k for k, _n, _s in plan].count("launch") == 3 and len(plan) == 10
    rows = [n for k, n, _s in plan if k == "rows"]
    assert rows == sorted(rows) and 1 <= rows[0] and rows[-1] < 1350
    for i, (kind, _n, delay) in enumerate(plan):
        if kind == "launch":
            assert 0.1 <= delay <= 1.0
            assert all(n < 750 for k, n, _s in plan[:i] if k == "rows")  # only early in the run
        else:
            assert 0.0 <= delay <= 0.05


@pytest.mark.slow
def test_search_survives_random_sigkills(db_url):
    engine = open_db(db_url)
    backend = "sqlite" if engine.dialect.name == "sqlite" else "postgres"
    started = time.monotonic()
    reference = asyncio.run(run_search(db_url, "reference", SearchConfig(**SETTINGS), workers=1))
    tree = reference.tree
    # The chain must cover an expansion whose children were all duplicates (no child row): its
    # count was once derived from the children and lost on resume.
    assert any(tree.expansions[i] > len({tree.round[c] for c in tree.children[i]}) for i in range(1, len(tree)))
    reference_s = time.monotonic() - started
    plan = kill_plan(random.Random(2026), KILLS[backend], LAUNCH_KILLS[backend], SETTINGS["budget"])
    landed = _kill_chain(db_url, engine, "killed", plan)
    assert len(landed) == KILLS[backend]
    assert evaluation_count(engine, "killed") < reference.progress.evaluations  # the last kill was mid-run
    done = run_cli(_args(db_url, "killed"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert duplicate_evaluations(engine) == []
    killed_rows = evaluation_set(engine, "killed")
    assert killed_rows == evaluation_set(engine, "reference")
    assert len(killed_rows) == reference.progress.evaluations  # every budgeted evaluation is a row
    assert workflow_set(engine, "killed") == workflow_set(engine, "reference")
    assert _tree(engine, "killed") == tree.snapshot()
    with session_scope(engine) as s:
        state = s.query(Run.state).filter(Run.name == "killed").scalar()
    assert state["evaluations"] == reference.progress.evaluations
    print(f"RELIABILITY search kills={len(landed)} rows_checked={len(killed_rows)} "
          f"reference_s={reference_s:.1f} total_s={time.monotonic() - started:.1f} landed={landed}")
