"""Graft mode: the policy writes per-problem programs for the parent's failures; verified ones
become routing branches of the parent (workflow_rl/policy_graft.py)."""

from __future__ import annotations

import ast
import asyncio
from dataclasses import replace

import pytest

from operators.validate import validate_workflow
from search.base import FailedExample, ProposalContext
from search.graft import solves_example
from workflow_rl.benchmarks import get_benchmark
from workflow_rl.policy import Policy
from workflow_rl.policy_graft import GraftProposer


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.load("builtin:tiny", device="cpu")


def _context() -> ProposalContext:
    bench = get_benchmark("calc")
    failures = (
        FailedExample(11, "Find the median of 3, 9, 4.", "4", "16"),
        FailedExample(12, "Reverse the text 'kodu'.", "udok", None, "calculate: bad expression"),
        FailedExample(13, "Convert 2 km to m.", "2000", "2"),
        FailedExample(11, "Find the median of 3, 9, 4.", "4", "16"),  # a repeat of problem 11
    )
    return ProposalContext(
        benchmark="calc", task_description=bench.description, operator_names=tuple(bench.operator_names),
        parent_workflow_id=7, parent_code=bench.seed_workflows()["calculate"], parent_score=0.25,
        failures=failures, passes=("What is 2 + 3?", "Compute 4 * 5."),
    )


def test_children_are_the_parent_plus_branches_verified_on_their_failure(policy):
    context = _context()
    proposer = GraftProposer(policy, checkpoint_id=None, samples=24, max_new_tokens=48)
    children = asyncio.run(proposer.propose(context, 2, seed=3))
    assert children == asyncio.run(proposer.propose(context, 2, seed=3))  # deterministic per seed
    assert children, "the base policy found no verified program in 24 samples per failure"
    assert sum(c.prior for c in children) == pytest.approx(1.0)
    parent_body = ast.parse(context.parent_code).body[0].body
    for child in children:
        validate_workflow(child.code, context.operator_names)
        assert child.source == "mutation" and child.generation is None  # an edit: search data (rule 11)
        assert child.meta["mutation"] == "policy_graft" and child.meta["policy_version"] is None
        body = ast.parse(child.code).body[0].body
        branches = body[: child.meta["branches"]]
        assert child.meta["branches"] >= 1 and ast.dump(ast.Module(body[len(branches):], [])) == ast.dump(
            ast.Module(parent_body, []))  # the parent's own statements follow, unchanged
        for branch in branches:  # each routes its cue to a program that solves a failure containing it
            assert isinstance(branch, ast.If) and isinstance(branch.test, ast.Compare)
            cue = branch.test.left.value
            targets = [f for f in context.failures if cue in f.problem]
            assert targets and any(asyncio.run(solves_example(branch.body, "problem", f)) for f in targets)


def test_each_solution_is_checked_on_the_failures_once(policy, monkeypatch):
    """Children share solutions: which failures a solution solves is run once per solution used,
    not once per child (the same children come out)."""
    import workflow_rl.policy_graft as policy_graft

    context = _context()
    proposer = GraftProposer(policy, checkpoint_id=None, samples=24, max_new_tokens=48)
    expected = asyncio.run(proposer.propose(context, 4, seed=3))
    calls: list[str] = []
    real = policy_graft.solved_map

    async def counting(statements, problem_name, failures):
        calls.append(ast.dump(ast.Module(statements, [])))
        return await real(statements, problem_name, failures)

    monkeypatch.setattr(policy_graft, "solved_map", counting)
    assert asyncio.run(proposer.propose(context, 4, seed=3)) == expected
    assert calls and len(calls) == len(set(calls))


def test_no_failures_no_children(policy):
    proposer = GraftProposer(policy, checkpoint_id=4, samples=2, max_new_tokens=8)
    assert asyncio.run(proposer.propose(replace(_context(), failures=()), 3, seed=0)) == []
    with pytest.raises(ValueError):
        GraftProposer(policy, checkpoint_id=4, samples=0)
