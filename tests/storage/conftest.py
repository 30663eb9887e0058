"""Storage fixtures: a migrated engine per backend and a small hand-computable example database.

The example ("demo" run) — rewards and costs chosen so every view has a hand-computed answer:

    problems (benchmark calc): v1, v2, v3 = validation; t1 = test
    run demo:  w1 seed r0;  w2 mutation r1 (parent w1);  w3 policy r1 (parent w2)
    run other: w4 seed r0
    w1: v1 rep0 1.0 $0.01 | v1 rep1 0.0 $0.01 | v2 0.0 $0.02 | v3 0.0 $0.02 | t1 1.0 $0.50
    w2: v1 1.0 $0.03 | v2 1.0 cost unknown | v3 0.0 $0.01
    w3: v1 0.5 unknown | v2 0.0 unknown
    w4: v1 0.0 $0.10
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from storage import open_db, repo, session_scope

EVALS = {
    # workflow name -> [(problem key, repeat, reward, cost)]
    "w1": [("v1", 0, 1.0, 0.01), ("v1", 1, 0.0, 0.01), ("v2", 0, 0.0, 0.02), ("v3", 0, 0.0, 0.02),
           ("t1", 0, 1.0, 0.50)],
    "w2": [("v1", 0, 1.0, 0.03), ("v2", 0, 1.0, None), ("v3", 0, 0.0, 0.01)],
    "w3": [("v1", 0, 0.5, None), ("v2", 0, 0.0, None)],
    "w4": [("v1", 0, 0.0, 0.10)],
}


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A freshly migrated database (SQLite and PostgreSQL), disposed after the test."""
    eng = open_db(db_url)
    yield eng
    eng.dispose()


def fill_demo(engine: Engine) -> dict[str, int]:
    """Write the example above; returns ids by name (runs, problems ``p:<key>``, workflows)."""
    ids: dict[str, int] = {}
    with session_scope(engine) as s:
        demo = repo.get_or_create_run(s, "demo", "calc")
        other = repo.get_or_create_run(s, "other", "calc")
        ids["demo"], ids["other"] = demo.id, other.id
        pids = repo.upsert_problems(
            s, "calc",
            [{"key": k, "split": "validation", "text": f"problem {k}", "reference": "1"} for k in ("v1", "v2", "v3")]
            + [{"key": "t1", "split": "test", "text": "problem t1", "reference": "2"}],
        )
        ids.update({f"p:{k}": v for k, v in pids.items()})
        w1 = repo.add_workflow(s, demo.id, "async def solve(problem, ops):\n    return 1\n", "seed")
        w2 = repo.add_workflow(s, demo.id, "async def solve(problem, ops):\n    return 2\n", "mutation",
                               round=1, parent_id=w1.id)
        w3 = repo.add_workflow(s, demo.id, "async def solve(problem, ops):\n    return 3\n", "policy",
                               round=1, parent_id=w2.id)
        w4 = repo.add_workflow(s, other.id, "async def solve(problem, ops):\n    return 4\n", "seed")
        ids.update(w1=w1.id, w2=w2.id, w3=w3.id, w4=w4.id)
        rows = []
        for name, evals in EVALS.items():
            run_id = ids["other"] if name == "w4" else ids["demo"]
            for key, rep, reward, cost in evals:
                rows.append({"run_id": run_id, "workflow_id": ids[name], "problem_id": pids[key],
                             "repeat": rep, "reward": reward, "cost": cost})
        repo.bulk_insert_evaluations(s, rows)
    return ids


@pytest.fixture
def demo(engine: Engine) -> tuple[Engine, dict[str, int]]:
    """The engine filled with the example database, and the ids of its rows."""
    return engine, fill_demo(engine)


def make_loop_round(engine: Engine, run_id: int, loop: str, round_: int = 0) -> int:
    """Turn run ``run_id`` into round ``round_`` of a loop called ``loop`` as ``workflow-rl loop`` stores
    it: the round run is renamed ``<loop>/r<round>`` and points at a new loop run named ``loop``."""
    from storage.models import Run

    with session_scope(engine) as s:
        round_run = s.get(Run, run_id)
        round_run.name = f"{loop}/r{round_}"
        loop_run = Run(name=loop, benchmark=round_run.benchmark, kind="loop", status="done", config={},
                       state={"rounds": {str(round_): {"search_run": round_run.name, "phase": "done"}}})
        s.add(loop_run)
        s.flush()
        round_run.parent_id, round_run.loop_round = loop_run.id, round_
        return loop_run.id


@pytest.fixture
def loop_demo(engine: Engine) -> tuple[Engine, dict[str, int]]:
    """The example database with run ``demo`` stored as round 0 of a loop named ``demo``."""
    ids = fill_demo(engine)
    ids["loop"] = make_loop_round(engine, ids["demo"], "demo")
    return engine, ids
