"""Round-trip of every table through the repository functions, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import func, select

from storage import read_session_scope, repo, session_scope
from storage.models import (
    Evaluation,
    Generation,
    PolicyCheckpoint,
    Problem,
    Run,
    SearchNode,
    TrainStep,
    Workflow,
)
from workflow_rl.tasks.base import BenchProblem

CODE = "async def solve(problem, ops):\n    return await ops.generate(problem)\n"


def test_runs_round_trip_and_get_or_create_is_idempotent(engine):
    with session_scope(engine) as s:
        run = repo.get_or_create_run(s, "r", "calc", kind="loop", config={"budget": 3, "nested": [1, 2]})
        again = repo.get_or_create_run(s, "r", "other-benchmark")
        assert again.id == run.id and again.benchmark == "calc"
        repo.get_or_create_run(s, "q", "calc")
    with read_session_scope(engine) as s:
        run = repo.find_run(s, "r")
        assert (run.kind, run.status, run.config, run.state) == ("loop", "running", {"budget": 3, "nested": [1, 2]}, {})
        assert isinstance(run.created_at, datetime)
        assert [r.name for r in repo.list_runs(s)] == ["r", "q"]
        assert repo.find_run(s, "missing") is None


def test_problems_upsert_by_benchmark_and_key(engine):
    problems = [BenchProblem("a", "validation", "1+1", "2", {"family": "add"}),
                {"key": "b", "split": "train", "text": "2*3", "reference": {"answer": 6, "tests": ["x"]}}]
    with session_scope(engine) as s:
        ids = repo.upsert_problems(s, "calc", problems)
        ids_other = repo.upsert_problems(s, "other", problems[:1])
    assert set(ids) == {"a", "b"} and ids_other["a"] not in ids.values()
    with session_scope(engine) as s:  # same keys again: same ids, changed fields updated
        again = repo.upsert_problems(s, "calc", [BenchProblem("a", "test", "1+1=?", "2")])
        assert again == {"a": ids["a"]}
    with read_session_scope(engine) as s:
        a = s.get(Problem, ids["a"])
        assert (a.split, a.text, a.reference, a.meta) == ("test", "1+1=?", "2", {})
        b = s.get(Problem, ids["b"])
        assert b.reference == {"answer": 6, "tests": ["x"]}
        assert repo.problem_ids(s, "calc") == ids
        assert repo.problem_ids(s, "calc", "train") == {"b": ids["b"]}
        assert s.scalar(select(func.count()).select_from(Problem)) == 3


def test_workflows_dedupe_on_run_and_code_hash_and_lineage(engine):
    with session_scope(engine) as s:
        run = repo.get_or_create_run(s, "r", "calc")
        other = repo.get_or_create_run(s, "q", "calc")
        parent = repo.add_workflow(s, run.id, CODE, "seed", graph_hash="g1")
        child = repo.add_workflow(s, run.id, CODE + "# v2\n", "mutation", parent_id=parent.id, round=1)
        dup = repo.add_workflow(s, run.id, CODE, "llm", round=5)
        elsewhere = repo.add_workflow(s, other.id, CODE, "seed")
        bad = repo.add_workflow(s, run.id, "import os", "llm", valid=False, error="imports are not allowed",
                                code_hash="h" * 64)
        with pytest.raises(ValueError, match="source"):
            repo.add_workflow(s, run.id, "x", "alien")
    assert dup.id == parent.id and dup.source == "seed" and dup.round == 0  # first writer wins
    assert elsewhere.id != parent.id
    with read_session_scope(engine) as s:
        w = repo.get_workflow(s, child.id)
        assert (w.code, w.parent_id, w.round, w.source, w.valid) == (CODE + "# v2\n", parent.id, 1, "mutation", True)
        assert repo.get_workflow(s, parent.id).code_hash == repo.code_hash(CODE)
        assert repo.get_workflow(s, parent.id).graph_hash == "g1"
        assert (s.get(Workflow, bad.id).valid, s.get(Workflow, bad.id).code_hash) == (False, "h" * 64)
        assert [x.id for x in repo.workflow_lineage(s, child.id)] == [child.id, parent.id]
        assert s.scalar(select(func.count()).select_from(Workflow)) == 4


def test_generation_checkpoint_train_step_round_trip(engine):
    with session_scope(engine) as s:
        run = repo.get_or_create_run(s, "r", "calc")
        ckpt = repo.add_checkpoint(s, "/ckpt/1", "tiny-gpt", run_id=run.id, round=1, step=7, metrics={"loss": 0.5})
        w = repo.add_workflow(s, run.id, CODE, "policy", checkpoint_id=ckpt.id)
        gen = repo.add_generation(
            s, run_id=run.id, workflow_id=w.id, group_key="r:0:p1", prompt_text="write", prompt_token_ids=[1, 2],
            completion_text=CODE, completion_token_ids=[3, 4, 5], behavior_logprobs=[-0.1, -0.25, -1.5],
            temperature=0.7, top_p=1.0, top_k=0, sampler="transformers", policy_version=ckpt.id,
        )
        repo.add_train_step(s, run.id, 1, {"loss/policy": 0.3}, round=1, checkpoint_id=ckpt.id)
        repo.add_train_step(s, run.id, 1, {"loss/policy": 0.2}, round=1)  # resumed step replaces metrics
    with read_session_scope(engine) as s:
        g = s.get(Generation, gen.id)
        assert (g.prompt_token_ids, g.completion_token_ids, g.behavior_logprobs) == ([1, 2], [3, 4, 5],
                                                                                     [-0.1, -0.25, -1.5])
        assert (g.temperature, g.top_p, g.top_k, g.policy_version, g.truncated) == (0.7, 1.0, 0, ckpt.id, False)
        assert [x.id for x in repo.generations_for(s, w.id)] == [gen.id]
        c = repo.latest_checkpoint(s, run.id)
        assert (c.path, c.base_model, c.round, c.step, c.metrics) == ("/ckpt/1", "tiny-gpt", 1, 7, {"loss": 0.5})
        steps = s.scalars(select(TrainStep)).all()
        assert [(t.step, t.round, t.metrics, t.checkpoint_id) for t in steps] == [(1, 1, {"loss/policy": 0.2}, None)]
        assert s.get(PolicyCheckpoint, ckpt.id).run_id == run.id


def test_evaluations_bulk_insert_is_idempotent_and_looked_up(engine):
    with session_scope(engine) as s:
        run = repo.get_or_create_run(s, "r", "calc")
        pids = repo.upsert_problems(s, "calc", [BenchProblem(f"p{i}", "validation", "t", "1") for i in range(3)])
        w = repo.add_workflow(s, run.id, CODE, "seed")
        rows = [{"run_id": run.id, "workflow_id": w.id, "problem_id": pids[f"p{i}"], "repeat": r,
                 "reward": float(i == 1), "answer": str(i), "output": "out", "error_kind": None,
                 "cost": 0.001, "latency_s": 0.5, "prompt_tokens": 10, "completion_tokens": 3}
                for i in range(3) for r in range(2)]
        repo.bulk_insert_evaluations(s, rows)
    with session_scope(engine) as s:  # a resumed search re-sends rows: nothing changes
        changed = [dict(row, reward=0.75) for row in rows]
        repo.bulk_insert_evaluations(s, changed + [{"run_id": run.id, "workflow_id": w.id,
                                                    "problem_id": pids["p0"], "repeat": 2, "reward": 0.0,
                                                    "error_kind": "timeout", "error_message": "took 10s"}])
        repo.bulk_insert_evaluations(s, [])
        with pytest.raises(ValueError, match="unknown evaluation columns"):
            repo.bulk_insert_evaluations(s, [{"run_id": 1, "rewardz": 1.0}])
    with read_session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(Evaluation)) == 7
        found = repo.stored_evaluations(s, w.id, [pids["p0"], pids["p1"]])
        assert sorted(found) == sorted([(pids["p0"], 0), (pids["p0"], 1), (pids["p0"], 2), (pids["p1"], 0),
                                        (pids["p1"], 1)])
        e = found[(pids["p1"], 1)]
        assert (e.reward, e.answer, e.output, e.cost, e.latency_s, e.prompt_tokens, e.completion_tokens) == (
            1.0, "1", "out", 0.001, 0.5, 10, 3)
        assert (found[(pids["p0"], 2)].error_kind, found[(pids["p0"], 2)].prompt_tokens) == ("timeout", 0)
        assert len(repo.stored_evaluations(s, w.id)) == 7
        scores = repo.workflow_scores(s, w.id)
        assert len(scores) == 1 and scores[0]["split"] == "validation"
        assert scores[0]["mean_reward"] == pytest.approx(2 / 7)
        assert (scores[0]["n_evaluations"], scores[0]["n_problems"]) == (7, 3)


def test_search_nodes_upsert_and_atomic_update(engine):
    with session_scope(engine) as s:
        run = repo.get_or_create_run(s, "r", "calc")
        w1 = repo.add_workflow(s, run.id, CODE, "seed")
        w2 = repo.add_workflow(s, run.id, CODE + "#\n", "mutation", parent_id=w1.id)
        root = repo.upsert_search_node(s, run.id, w1.id, prior=1.0)
        child = repo.upsert_search_node(s, run.id, w2.id, parent_node_id=root.id, depth=1, round=1)
        assert repo.upsert_search_node(s, run.id, w1.id, prior=0.1).id == root.id
        repo.update_search_node(s, root.id, add_visits=1, add_value=0.5, expanded=True)
        repo.update_search_node(s, root.id, add_visits=2, add_value=0.25, prior=0.3)
        assert (root.visits, root.value_sum, root.expanded, root.prior) == (3, 0.75, True, 0.3)
    with read_session_scope(engine) as s:
        nodes = repo.search_nodes(s, run.id)
        assert [n.id for n in nodes] == [root.id, child.id]
        c = s.get(SearchNode, child.id)
        assert (c.parent_node_id, c.depth, c.round, c.visits, c.value_sum, c.expanded) == (root.id, 1, 1, 0, 0.0, False)


def test_delete_run_cascades(engine):
    with session_scope(engine) as s:
        run = repo.get_or_create_run(s, "r", "calc")
        pid = repo.upsert_problems(s, "calc", [BenchProblem("a", "validation", "t", "1")])["a"]
        w = repo.add_workflow(s, run.id, CODE, "seed")
        repo.bulk_insert_evaluations(s, [{"run_id": run.id, "workflow_id": w.id, "problem_id": pid, "reward": 1.0}])
        repo.upsert_search_node(s, run.id, w.id)
    with session_scope(engine) as s:
        s.delete(s.get(Run, run.id))
    with read_session_scope(engine) as s:
        for model in (Workflow, Evaluation, SearchNode):
            assert s.scalar(select(func.count()).select_from(model)) == 0
        assert s.scalar(select(func.count()).select_from(Problem)) == 1


def test_bulk_insert_converts_caller_values_and_enforces_foreign_keys(engine):
    from datetime import timezone
    from decimal import Decimal

    from sqlalchemy import exc

    with session_scope(engine) as s:
        run = repo.get_or_create_run(s, "r", "calc")
        pid = repo.upsert_problems(s, "calc", [BenchProblem("a", "validation", "t", "1")])["a"]
        w = repo.add_workflow(s, run.id, CODE, "seed")
        when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        repo.bulk_insert_evaluations(s, [{"run_id": run.id, "workflow_id": w.id, "problem_id": pid,
                                          "reward": Decimal("0.5"), "cost": 1, "created_at": when}])
    with read_session_scope(engine) as s:
        e = s.scalars(select(Evaluation)).one()
        assert (e.reward, e.cost, type(e.reward)) == (0.5, 1.0, float)
        assert e.created_at.replace(tzinfo=None) == when.replace(tzinfo=None)
    with pytest.raises(exc.IntegrityError), session_scope(engine) as s:
        repo.bulk_insert_evaluations(s, [{"run_id": run.id, "workflow_id": 999, "problem_id": pid, "reward": 1.0}])
    with pytest.raises(ValueError, match="need"), session_scope(engine) as s:
        repo.bulk_insert_evaluations(s, [{"run_id": run.id, "workflow_id": w.id, "reward": 1.0}])
