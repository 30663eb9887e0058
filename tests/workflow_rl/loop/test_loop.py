"""The closed loop on tiny budgets: two rounds end to end, resume, policy versions, mismatch ~ 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from storage.engine import open_db, session_scope
from storage.models import Generation, PolicyCheckpoint, Run, SearchNode, TrainStep, Workflow
from workflow_rl.errors import WorkflowRLError
from workflow_rl.loop.config import LoopConfig
from workflow_rl.loop.driver import LoopResult, RoundInfo, run_loop
from workflow_rl.loop.policy_eval import evaluate_policy
from workflow_rl.policy.model import Policy


def tiny_config(out_dir, rounds: int, **over) -> LoopConfig:
    """Budgets small enough for a unit test (seconds per phase on a CPU)."""
    values = dict(run="t", rounds=rounds, search_budget=40, search_batch=10, children=2, train_problems=3,
                  group_size=2, top_workflows=2, extra_workflows=1, max_new_tokens=24, epochs=1, batch_size=8,
                  micro_batch_size=8, mutation_fraction=0.5, policy_children="rewrite", search_branches=4, out_dir=str(out_dir),
                  workers=1)
    return LoopConfig(**{**values, **over})


@pytest.fixture(scope="module")
def loop_db(tmp_path_factory):
    """A loop run for one round, then continued to two rounds by re-running with --rounds 2.

    Rewrite mode: every policy child of the search is an exact policy sample with a generation row
    (graft mode is tested on its own below).
    """
    root = tmp_path_factory.mktemp("loop")
    db = str(root / "loop.db")
    first = run_loop(tiny_config(root / "runs", 1), db)
    second = run_loop(tiny_config(root / "runs", 2), db)
    return db, first, second


def test_two_rounds_end_to_end_and_resume(loop_db):
    db, first, second = loop_db
    assert [r.round for r in first.rounds] == [0]
    assert [r.round for r in second.rounds] == [0, 1]
    assert second.rounds[0] == first.rounds[0]  # round 0 was continued, not redone
    engine = open_db(db)
    with session_scope(engine) as s:
        loop = s.scalar(select(Run).where(Run.name == "t"))
        assert (loop.kind, loop.status) == ("loop", "done")
        assert {k: v["phase"] for k, v in loop.state["rounds"].items()} == {"0": "done", "1": "done"}
        rounds = s.execute(select(Run.name, Run.loop_round).where(Run.parent_id == loop.id).order_by(Run.id)).all()
        assert [tuple(r) for r in rounds] == [("t/r0", 0), ("t/r1", 1)]  # the rounds point at their loop
        ckpts = s.scalars(select(PolicyCheckpoint).order_by(PolicyCheckpoint.id)).all()
        assert [c.round for c in ckpts] == [0, 1]
        assert [c.id for c in ckpts] == [r.checkpoint_id for r in second.rounds]
        for r in second.rounds:  # each round's training is stored under its search run
            steps = s.scalars(select(TrainStep).join(Run, Run.id == TrainStep.run_id)
                              .where(Run.name == r.search_run)).all()
            assert steps and all(step.round == r.round for step in steps)
    # re-running a finished loop changes nothing
    again = run_loop(tiny_config(None, 2), db)  # out_dir comes from the stored config
    assert again.rounds == second.rounds


def test_round_two_children_carry_round_one_checkpoint(loop_db):
    db, _, second = loop_db
    ckpt0 = second.rounds[0].checkpoint_id
    engine = open_db(db)
    with session_scope(engine) as s:
        r0 = s.scalar(select(Run.id).where(Run.name == "t/r0"))
        r1 = s.scalar(select(Run.id).where(Run.name == "t/r1"))
        # round 0 (mutation search): the only generations are the base policy's train-problem groups
        assert {g.policy_version for g in s.scalars(select(Generation).where(Generation.run_id == r0))} == {None}
        assert s.scalar(select(Workflow.id).join(SearchNode, SearchNode.workflow_id == Workflow.id)
                        .where(SearchNode.run_id == r0, Workflow.source == "policy")) is None
        # round 1: every generation (search children and train groups) comes from round 0's checkpoint
        gens = s.scalars(select(Generation).where(Generation.run_id == r1)).all()
        search_gens = [g for g in gens if ":sim" in g.group_key]
        children = s.scalars(select(Workflow).where(Workflow.run_id == r1, Workflow.source == "policy")).all()
        # the premise: round 1's search stored a policy child (4 at 189153b; a child that duplicates
        # a tree node is scored as that node and stored nowhere, but at max_new_tokens=24 nearly every
        # rewrite is a new, mostly invalid, program; invalid ones are stored with their generation)
        assert search_gens and children, (
            f"premise: round 1's policy-steered search stored {len(search_gens)} policy children (with a "
            f"generation row) and round 1 {len(children)} policy workflows; nothing left to check")
        assert {g.policy_version for g in gens} == {ckpt0}
        for g in gens:
            assert (g.temperature, g.top_p, g.top_k, g.sampler) == (1.0, 1.0, 0, "transformers")
            assert len(g.behavior_logprobs) == len(g.completion_token_ids) > 0
        assert {w.checkpoint_id for w in children} == {ckpt0}
        rows = [(list(g.prompt_token_ids), list(g.completion_token_ids), list(g.behavior_logprobs))
                for g in search_gens]
        path = s.get(PolicyCheckpoint, ckpt0).path
    # behavior logprobs of the children == the learner's (teacher-forced) old logprobs under ckpt 0
    policy = Policy.load(path, device="cpu")
    with torch.no_grad():
        old, lengths = policy.forward_logprobs([p for p, _, _ in rows], [c for _, c, _ in rows], 1.0)
    gap = max(abs(float(old[b, j]) - rows[b][2][j]) for b in range(len(rows)) for j in range(int(lengths[b])))
    assert gap < 1e-4


def test_trainer_metrics_record_mismatch(loop_db):
    db, _, _ = loop_db
    engine = open_db(db)
    with session_scope(engine) as s:
        metrics = [m for (m,) in s.execute(select(TrainStep.metrics))]
    with_policy = [m.get("samples/policy", 0) for m in metrics]
    assert any(with_policy), f"premise: no training step had policy samples ({len(metrics)} steps)"
    for m in metrics:
        assert "mismatch/old_behavior_abs_mean" in m and "reward/mean" in m
        if m.get("samples/policy", 0) > 0:
            assert m["mismatch/old_behavior_abs_max"] < 1e-3
    assert json.dumps(metrics)  # plain JSON in the DB


def test_loop_config_errors_state_the_fix(tmp_path):
    with pytest.raises(WorkflowRLError, match="group_size=1"):
        tiny_config(tmp_path, 1, group_size=1)
    with pytest.raises(WorkflowRLError, match="without '/'"):
        tiny_config(tmp_path, 1, run="a/b")
    with pytest.raises(WorkflowRLError, match="lr=-1"):
        tiny_config(tmp_path, 1, lr=-1.0)
    with pytest.raises(WorkflowRLError, match="'auto', 'graft' or 'rewrite'"):
        tiny_config(tmp_path, 1, policy_children="splice")
    with pytest.raises(WorkflowRLError, match="'last' or 'validation'"):
        tiny_config(tmp_path, 1, select_policy="best")
    with pytest.raises(WorkflowRLError, match="'positive', 'contrast' or 'all'"):
        tiny_config(tmp_path, 1, search_samples="best")
    for field in ("search_branches", "explore_budget", "search_per_group"):
        with pytest.raises(WorkflowRLError, match="search_per_group must be >= 0"):
            tiny_config(tmp_path, 1, **{field: -1})
    for field in ("explore_budget", "search_per_group"):
        with pytest.raises(WorkflowRLError, match=f"{field}=5 does nothing without search branches"):
            tiny_config(tmp_path, 1, search_branches=0, **{field: 5})
    assert tiny_config(tmp_path, 1, search_per_group=2).train_config("t/r0", "p", "o", 0).search_per_group == 2
    assert tiny_config(tmp_path, 1, search_per_group=0).train_config("t/r0", "p", "o", 0).search_per_group is None
    assert tiny_config(tmp_path, 1, lr=0.0, skip_frozen=True).train_config("t/r0", "p", "o", 0).skip_frozen


def test_graft_mode_children_contain_round_one_policy_branches(tmp_path, monkeypatch):
    """Graft mode: round 1's policy-written children are the parent plus verified branches; they are
    search data (no generation row) that records the checkpoint whose samples they contain.

    The premise, that the round-0 checkpoint writes a program that solves some failure, is set up
    at the model call: the policy's greedy program (graft mode's only greedy call in the loop) is
    the failing problem's oracle; its 16 samples per failure stay the real ones (they verified 2
    grafts in this run at 189153b, too few to rely on)."""
    from tests.helpers.learner import scripted_sample
    from workflow_rl.policy.model import PolicySample
    from workflow_rl.policy.prompts import policy_prompt_for
    from workflow_rl.tasks import get_benchmark

    bench = get_benchmark("calc")
    oracle = {policy_prompt_for(bench.description, bench.operator_names, p.text): bench.oracle_for(p)
              for split in ("train", "validation") for p in bench.problems(split)}
    real = Policy.sample
    greedy_calls = []

    def sample(self, prompts, n=1, temperature=1.0, *args, **kw) -> list[PolicySample]:
        if temperature != 0.0:
            return real(self, prompts, n, temperature, *args, **kw)
        greedy_calls.append(len(prompts))
        assert n == 1 and all(p in oracle for p in prompts), "a greedy call that is not graft mode's"
        return [scripted_sample(self, prompts, i, oracle[p], 0.0) for i, p in enumerate(prompts)]

    monkeypatch.setattr(Policy, "sample", sample)
    db = str(tmp_path / "graft.db")
    result = run_loop(tiny_config(tmp_path / "runs", 2, run="g", policy_children="graft", graft_samples=16,
                                  graft_failures=9, mutation_fraction=0.0, search_budget=60, max_new_tokens=48, top_workflows=0,
                                  extra_workflows=0), db)
    ckpt0 = result.rounds[0].checkpoint_id
    engine = open_db(db)
    with session_scope(engine) as s:
        r1 = s.scalar(select(Run.id).where(Run.name == "g/r1"))
        grafts = s.scalars(select(Workflow).join(SearchNode, SearchNode.workflow_id == Workflow.id)
                           .where(SearchNode.run_id == r1, Workflow.checkpoint_id.is_not(None))).all()
        assert greedy_calls, "round 1 never asked the policy for a graft"
        # graft_failures: the policy writes programs for up to 9 of a node's failures, while the search
        # (and so the mutations) keeps its sample of 6
        assert 6 < max(greedy_calls) <= 9, greedy_calls
        configs = {r.name: r.config for r in s.scalars(select(Run).where(Run.name.in_(["g/r0", "g/r1"])))}
        assert (configs["g/r0"]["max_failures"], configs["g/r1"]["max_failures"]) == (6, 6)
        assert grafts, "no policy branch was verified in round 1 (the greedy programs were the oracles)"
        for wf in grafts:
            assert (wf.source, wf.checkpoint_id, wf.valid) == ("mutation", ckpt0, True)
            assert wf.code.lstrip().startswith("async def solve") and "    if '" in wf.code
        search_gens = s.scalars(select(Generation).where(Generation.run_id == r1,
                                                          Generation.group_key.like("%:sim%"))).all()
        assert search_gens == []  # edits of the parent are never trained as policy samples (rule 11)


def test_interrupted_round_is_redone_without_duplicates(loop_db):
    """A loop killed after round 1's search (state says 'data') redoes data + training idempotently."""
    db, _, second = loop_db
    engine = open_db(db)

    def counts():
        with session_scope(engine) as s:
            r1 = s.scalar(select(Run.id).where(Run.name == "t/r1"))
            return (len(s.scalars(select(Generation.id).where(Generation.run_id == r1)).all()),
                    len(s.scalars(select(Workflow.id).where(Workflow.run_id == r1)).all()),
                    len(s.scalars(select(TrainStep.id).where(TrainStep.run_id == r1)).all()),
                    len(s.scalars(select(PolicyCheckpoint.id).where(PolicyCheckpoint.run_id == r1)).all()))

    before = counts()
    with session_scope(engine) as s:
        loop = s.scalar(select(Run).where(Run.name == "t"))
        state = dict(loop.state)
        state["rounds"] = {**state["rounds"], "1": {**state["rounds"]["1"], "phase": "data"}}
        loop.state = state
        loop.status = "failed"
    again = run_loop(tiny_config(None, 2), db)
    assert counts() == before  # same generations/workflows, steps and one checkpoint: nothing doubled
    assert again.rounds[0] == second.rounds[0]
    assert (Path(again.rounds[1].checkpoint_path) / "policy.json").exists()  # retrained, re-registered


def test_eval_policy_writes_runs_and_stores_one_workflow_per_problem(loop_db):
    from storage.models import Evaluation
    from workflow_rl.loop.policy_eval import evaluate_policy
    from workflow_rl.tasks.calc import CalcBenchmark

    db, _, second = loop_db
    bench = CalcBenchmark(test_size=4)
    ckpt = str(second.final_checkpoint.checkpoint_id)
    greedy = evaluate_policy(db, ckpt, "test", bench, max_new_tokens=16, run="eval/g", workers=1)
    sampled = evaluate_policy(db, ckpt, "test", bench, best_of=2, max_new_tokens=16, run="eval/k2", workers=1,
                              with_greedy=False)  # every candidate sampled: each stored at T = 1
    assert greedy.problems == sampled.problems == 4 and greedy.checkpoint_id == second.final_checkpoint.checkpoint_id
    engine = open_db(db)
    with session_scope(engine) as s:
        for result, temperature in ((greedy, 0.0), (sampled, 1.0)):
            run = s.scalar(select(Run).where(Run.name == result.run))
            assert (run.kind, run.status, run.state["accuracy"]) == ("eval", "done", result.accuracy)
            rewards = [e.reward for e in s.scalars(select(Evaluation).where(Evaluation.run_id == run.id))]
            assert len(rewards) == 4 and sum(rewards) / 4 == pytest.approx(result.accuracy)
            gens = s.scalars(select(Generation).where(Generation.run_id == run.id)).all()
            assert len({g.problem_id for g in gens}) == 4 and {g.temperature for g in gens} == {temperature}
            assert {g.policy_version for g in gens} == {greedy.checkpoint_id}
    with pytest.raises(WorkflowRLError, match="best_of=0"):
        evaluate_policy(db, ckpt, "test", bench, best_of=0)


def test_auto_children_graft_only_where_every_operator_is_a_tool(tmp_path):
    from workflow_rl.loop.driver import children_mode
    from workflow_rl.tasks import get_benchmark

    calc = tuple(get_benchmark("calc").operator_names)
    humaneval = tuple(get_benchmark("humaneval").operator_names)  # LLM operators: no host check
    auto = tiny_config(tmp_path, 1, policy_children="auto")
    assert (children_mode(auto, calc), children_mode(auto, humaneval)) == ("graft", "rewrite")
    for mode in ("graft", "rewrite"):
        assert children_mode(tiny_config(tmp_path, 1, policy_children=mode), humaneval) == mode
    assert LoopConfig.policy_children == "auto"


def test_search_branches_run_on_the_rounds_train_problems(loop_db):
    """Every straight-line branch of round 0's valid search workflows, canonical, is a workflow of
    the round that ran on exactly the round's train problems (the learner's per-problem search samples)."""
    from search.proposers.signatures import load_signatures
    from storage.models import Evaluation, Problem
    from workflow_rl.policy.canonical import branch_programs, canonical
    from workflow_rl.tasks.calc import CALC_OPERATORS

    db, _, _ = loop_db
    returns = {n: s.returns for n, s in load_signatures(CALC_OPERATORS).items()}
    engine = open_db(db)
    with session_scope(engine) as s:
        r0 = s.scalar(select(Run.id).where(Run.name == "t/r0"))
        codes = s.scalars(select(Workflow.code).join(SearchNode, SearchNode.workflow_id == Workflow.id)
                          .where(SearchNode.run_id == r0, Workflow.valid.is_(True))).all()
        train = set(s.scalars(select(Generation.problem_id).where(Generation.run_id == r0)))
        programs = {canonical(b, returns) for code in codes for b in branch_programs(code)}
        assert programs and len(train) == 3
        for program in programs:
            wf = s.scalar(select(Workflow).where(Workflow.run_id == r0, Workflow.code == program))
            ran = set(s.scalars(select(Evaluation.problem_id).join(Problem, Problem.id == Evaluation.problem_id)
                                .where(Evaluation.workflow_id == wf.id, Problem.split == "train")))
            assert ran == train


def test_loop_policy_is_the_best_validated_round_the_later_on_ties():
    def info(r, val):
        return RoundInfo(r, f"t/r{r}", 0.5, 40, 10 + r, f"/c{r}", None, val)

    assert LoopResult("t", (info(0, None), info(1, None))).policy.round == 1  # nothing scored: the last
    assert LoopResult("t", (info(0, 0.4), info(1, 0.2))).policy.round == 0
    assert LoopResult("t", (info(0, 0.4), info(1, 0.4), info(2, 0.1))).policy.round == 1


def test_select_policy_validation_scores_each_checkpoint_and_resumes_at_select(tmp_path):
    """Each round's checkpoint gets its greedy validation accuracy (the same a separate eval of it
    gives); a loop stopped between training and that score resumes without retraining."""
    db = f"sqlite:///{tmp_path / 'v.db'}"
    config = tiny_config(tmp_path / "runs", 2, run="v", select_policy="validation")
    result = run_loop(config, db)
    scores = [info.policy_validation for info in result.rounds]
    assert all(score is not None and 0.0 <= score <= 1.0 for score in scores)
    ckpt = result.rounds[1].checkpoint_id
    again = evaluate_policy(db, str(ckpt), "validation", max_new_tokens=config.max_new_tokens, run="eval/again")
    assert again.accuracy == scores[1]
    engine = open_db(db)
    with session_scope(engine) as s:
        loop = s.scalar(select(Run).where(Run.name == "v"))
        state = dict(loop.state)
        state["rounds"] = {**state["rounds"], "1": {k: v for k, v in state["rounds"]["1"].items()
                                                    if k != "policy_validation"} | {"phase": "select"}}
        loop.state = state
        steps = len(s.scalars(select(TrainStep.id)).all())
    said: list[str] = []
    resumed = run_loop(tiny_config(None, 2, run="v"), db, message=said.append)
    assert resumed.rounds == result.rounds and resumed.policy == result.policy
    assert not any("loading policy" in line for line in said)  # scoring a checkpoint needs no sampler
    with session_scope(engine) as s:
        assert len(s.scalars(select(TrainStep.id)).all()) == steps  # not retrained
