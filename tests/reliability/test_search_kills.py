"""Crash safety of ``workflow-rl search``: SIGKILL at seeded-random points, resume, compare.

One run is killed again and again (each restart resumes it) at times drawn from a seeded RNG:
some right after launch (while the database is opened, migrated, the problems upserted) and most
while simulations are writing workflows, evaluations and nodes. Then it is resumed to the end.
It must equal an uninterrupted run with the same settings: the same workflows, exactly the same
(workflow, problem, repeat) evaluations (nothing lost, nothing twice) and the same tree.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from reliability_helpers import (
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

from search.config import SearchConfig
from search.tree import load_tree
from storage.engine import open_db, session_scope
from storage.models import Run
from workflow_rl.cli.search import run_search

SETTINGS = {"budget": 600, "batch_size": 8, "children": 3, "seed": 11}
KILLS = {"sqlite": 10, "postgres": 4}
"""Kills per backend (the search-resume logic is the same; PostgreSQL adds its own transactions)."""


def _args(db: str, run: str) -> list[str]:
    return ["--db", db, "search", "--run", run, "--budget", str(SETTINGS["budget"]), "--batch-size",
            str(SETTINGS["batch_size"]), "--children", str(SETTINGS["children"]), "--seed",
            str(SETTINGS["seed"]), "--workers", "1"]


def _tree(engine, run: str) -> list[tuple]:
    with session_scope(engine) as s:
        run_id = s.query(Run.id).filter(Run.name == run).scalar()
        return load_tree(s, run_id).snapshot()


def _kill_chain(db: str, engine, run: str, rng: random.Random, target: int) -> tuple[int, list[float]]:
    """Kill ``run``'s search ``target`` times at random points; returns (kills, kill delays)."""
    kills, delays = 0, []
    for trial in range(target * 3):  # a trial whose process finished first is not a kill
        if kills == target:
            break
        before = evaluation_count(engine, run)
        proc = spawn(_args(db, run))
        try:
            if trial % 4 == 0:
                delay = rng.uniform(0.2, 1.5)  # from launch: imports, open_db, upserts, seeds
                alive = stays_alive(proc, delay)
            else:
                # mid-simulation: once a seeded-random amount of new work (rows) is stored, plus a
                # random fraction of a child's execution, so the kill point does not depend on speed
                rows, delay = rng.randint(1, 3 * SETTINGS["batch_size"]), rng.uniform(0.0, 0.1)
                alive = wait_until(lambda b=before + rows: evaluation_count(engine, run) >= b, proc, 120,
                                   poll=0.01)
                alive = alive and stays_alive(proc, delay)
        finally:
            if proc.poll() is None:
                kill_group(proc)
                kills += 1
                delays.append(delay)
            else:
                proc.wait()
                err = stderr_of(proc)
                assert proc.returncode == 0, err[-3000:]
                if not alive:  # the run finished before the kill: the chain is over
                    break
    return kills, delays


@pytest.mark.slow
def test_search_survives_random_sigkills(db_url):
    engine = open_db(db_url)
    reference = asyncio.run(run_search(db_url, "reference", SearchConfig(**SETTINGS), workers=1))
    target = KILLS[engine.dialect.name if engine.dialect.name == "sqlite" else "postgres"]
    kills, delays = _kill_chain(db_url, engine, "killed", random.Random(2026), target)
    assert kills >= target, f"only {kills} kills landed before the run finished (delays {delays})"
    done = run_cli(_args(db_url, "killed"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert duplicate_evaluations(engine) == []
    killed_rows = evaluation_set(engine, "killed")
    assert killed_rows == evaluation_set(engine, "reference")
    assert len(killed_rows) == reference.progress.evaluations  # every budgeted evaluation is a row
    assert workflow_set(engine, "killed") == workflow_set(engine, "reference")
    assert _tree(engine, "killed") == reference.tree.snapshot()
    with session_scope(engine) as s:
        state = s.query(Run.state).filter(Run.name == "killed").scalar()
    assert state["evaluations"] == reference.progress.evaluations
    print(f"RELIABILITY search kills={kills} rows_checked={len(killed_rows)}")
