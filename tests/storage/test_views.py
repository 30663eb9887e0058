"""Each SQL view returns the hand-computed answer on the example database (see conftest.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from storage import read_session_scope
from storage.views import VIEWS


def _rows(engine, sql: str, **params) -> list[dict]:
    with read_session_scope(engine) as s:
        return [dict(r._mapping) for r in s.execute(text(sql), params)]


def test_leaderboard_is_validation_only_mean_count_cost(demo):
    engine, ids = demo
    rows = {r["workflow_id"]: r for r in _rows(engine, "SELECT * FROM leaderboard")}
    assert set(rows) == {ids["w1"], ids["w2"], ids["w3"], ids["w4"]}
    w1, w2, w3, w4 = (rows[ids[n]] for n in ("w1", "w2", "w3", "w4"))
    # w1: validation rewards 1,0,0,0 (t1 on the test split is excluded), costs .01+.01+.02+.02
    assert (w1["run"], w1["round"], w1["source"]) == ("demo", 0, "seed")
    assert w1["mean_reward"] == pytest.approx(0.25)
    assert (w1["n_evaluations"], w1["n_problems"]) == (4, 3)
    assert w1["total_cost"] == pytest.approx(0.06)
    # w2: 1,1,0 -> 2/3; unknown cost skipped: .03 + .01
    assert w2["mean_reward"] == pytest.approx(2 / 3)
    assert w2["total_cost"] == pytest.approx(0.04)
    assert (w2["round"], w2["source"]) == (1, "mutation")
    # w3: every cost unknown -> NULL
    assert w3["mean_reward"] == pytest.approx(0.25)
    assert w3["total_cost"] is None
    assert (w4["run"], w4["mean_reward"], w4["n_evaluations"]) == ("other", 0.0, 1)


def test_problem_matrix_averages_repeats(demo):
    engine, ids = demo
    rows = {(r["workflow_id"], r["problem_key"]): r for r in _rows(engine, "SELECT * FROM problem_matrix")}
    assert len(rows) == 10  # 4 + 3 + 2 + 1 (workflow, problem) pairs
    w1v1 = rows[(ids["w1"], "v1")]
    assert (w1v1["mean_reward"], w1v1["best_reward"], w1v1["n_repeats"]) == (0.5, 1.0, 2)
    assert w1v1["total_cost"] == pytest.approx(0.02)
    w1t1 = rows[(ids["w1"], "t1")]
    assert (w1t1["split"], w1t1["mean_reward"], w1t1["benchmark"]) == ("test", 1.0, "calc")


def test_round_summary(demo):
    engine, _ = demo
    rows = {(r["run"], r["round"]): r for r in _rows(engine, "SELECT * FROM round_summary")}
    assert set(rows) == {("demo", 0), ("demo", 1), ("other", 0)}
    r1 = rows[("demo", 1)]
    assert r1["n_workflows"] == 2
    assert r1["mean_reward"] == pytest.approx((2 / 3 + 0.25) / 2)
    assert r1["best_reward"] == pytest.approx(2 / 3)
    assert r1["total_cost"] == pytest.approx(0.04)
    assert rows[("demo", 0)]["best_reward"] == pytest.approx(0.25)


def test_problem_summary_finds_unsolved(demo):
    engine, _ = demo
    rows = {(r["run"], r["problem_key"]): r for r in _rows(engine, "SELECT * FROM problem_summary")}
    v1 = rows[("demo", "v1")]
    assert (v1["n_workflows"], v1["best_reward"]) == (3, 1.0)
    assert v1["mean_reward"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    unsolved = sorted(k for (run, k), r in rows.items() if run == "demo" and r["best_reward"] < 1)
    assert unsolved == ["v3"]


def test_views_in_database_match_views_module(engine):
    """Drift check for views: the migration's copies equal storage/views.py at head."""
    with engine.connect() as conn:
        names = set(inspect(conn).get_view_names())
        assert {v.name for v in VIEWS} <= names
        if engine.dialect.name == "sqlite":
            stored = dict(conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type='view'").all())
            for view in VIEWS:
                assert stored[view.name] == view.create_sql()


def test_every_view_names_the_loop_of_a_round_run(loop_demo):
    """Round runs carry their loop's name and round; runs outside a loop carry their own name, round NULL."""
    engine, _ = loop_demo
    for view in VIEWS:
        pairs = {(r["run"], r["loop"], r["loop_round"]) for r in _rows(engine, f"SELECT * FROM {view.name}")}
        assert pairs == {("demo/r0", "demo", 0), ("other", "other", None)}, view.name
