"""Graft mode: the policy writes per-problem programs for the parent's failures; verified ones
become routing branches of the parent (workflow_rl/policy/graft.py)."""

from __future__ import annotations

import ast
import asyncio
from dataclasses import replace

import pytest

from operators.validate import validate_workflow
from search.base import FailedExample, ProposalContext
from search.proposers.graft import solves_example
from tests.helpers.learner import scripted_sampler
from workflow_rl.policy.graft import GraftProposer
from workflow_rl.policy.model import Policy
from workflow_rl.policy.prompts import policy_prompt_for
from workflow_rl.tasks import get_benchmark


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


def _program(*lines: str) -> str:
    return "async def solve(problem, ops):\n" + "".join(f"    {line}\n" for line in lines)


MEDIAN = _program("values = await ops.extract_list(problem)", "return await ops.median(values)")
MEDIAN_2 = _program("numbers = await ops.extract_numbers(problem)", "return await ops.median(numbers)")
MEAN = _program("values = await ops.extract_list(problem)", "return await ops.mean(values)")  # 16/3, not 4
REVERSE = _program("text = await ops.extract_quoted(problem)", "return await ops.reverse_text(text)")
NUMBER = _program("value = await ops.extract_number(problem)", "return value")  # '2', not 2000
BROKEN = _program("return await ops.median(")  # a syntax error
ROUTED = _program("if 'median' in problem:", "    return await ops.median(await ops.extract_list(problem))",
                  "return await ops.calculate(problem)")  # solves it, but is not straight-line

SCRIPT = {  # failing problem -> (greedy program, sampled programs): what "the policy writes"
    "Find the median of 3, 9, 4.": (MEDIAN, [MEAN, MEDIAN_2, BROKEN, MEDIAN, ROUTED, MEDIAN_2]),
    "Reverse the text 'kodu'.": (BROKEN, [REVERSE, MEAN, REVERSE, BROKEN, NUMBER, REVERSE]),
    "Convert 2 km to m.": (NUMBER, [MEAN, BROKEN, ROUTED, NUMBER, MEDIAN, NUMBER]),
}
"""Solutions: median MEDIAN (greedy, so first though sampled after MEDIAN_2) and MEDIAN_2; reverse
REVERSE only; units none."""


@pytest.fixture
def scripted(policy, monkeypatch):
    """The policy's sampler (its only model call) writes ``SCRIPT``; returns the recorded calls."""
    calls: list = []

    def script(prompt: str, n: int, temperature: float):
        problem = next(p for p in SCRIPT if p in prompt)
        greedy, drawn = SCRIPT[problem]
        assert temperature == 0.0 or n == len(drawn), f"the test scripts {len(drawn)} samples, not {n}"
        return [(greedy, -0.5)] if temperature == 0.0 else [(code, -1.0) for code in drawn]

    monkeypatch.setattr(policy, "sample", scripted_sampler(policy, script, calls))
    return calls


def _branches(code: str) -> list[tuple[str, str]]:
    """``(cue, program statements)`` of each branch a graft put at the top of ``solve``."""
    body = ast.parse(code).body[0].body
    return [(b.test.left.value, ast.dump(ast.Module(b.body, []))) for b in body if isinstance(b, ast.If)]


def _statements(program: str) -> str:
    return ast.dump(ast.Module(ast.parse(program).body[0].body, []))


def test_children_are_the_parent_plus_branches_verified_on_their_failure(policy, scripted):
    context = _context()
    proposer = GraftProposer(policy, checkpoint_id=None, samples=6, max_new_tokens=48)
    children = asyncio.run(proposer.propose(context, 2, seed=3))
    # the policy is asked once per distinct failing problem (the repeat of 11 is one target), with
    # the per-problem prompt training uses: `samples` at the proposer's temperature, then greedy
    prompts = [policy_prompt_for(context.task_description, context.operator_names, f.problem)
               for f in context.failures[:3]]
    assert scripted == [(prompts, 6, 1.0), (prompts, 1, 0.0)]
    assert len(children) == 2, [c.code for c in children]
    assert sum(c.prior for c in children) == pytest.approx(1.0)
    parent_body = ast.parse(context.parent_code).body[0].body
    for child in children:
        validate_workflow(child.code, context.operator_names)
        assert child.source == "mutation" and child.generation is None  # an edit: search data (rule 11)
        assert child.meta["mutation"] == "policy_graft" and child.policy_version is None
        body = ast.parse(child.code).body[0].body
        branches = body[: child.meta["branches"]]
        assert child.meta["branches"] >= 1 and ast.dump(ast.Module(body[len(branches):], [])) == ast.dump(
            ast.Module(parent_body, []))  # the parent's own statements follow, unchanged
        for branch in branches:  # each routes its cue to a program that solves a failure containing it
            assert isinstance(branch, ast.If) and isinstance(branch.test, ast.Compare)
            cue = branch.test.left.value
            targets = [f for f in context.failures if cue in f.problem]
            assert targets and any(asyncio.run(solves_example(branch.body, "problem", f)) for f in targets)
    # child c takes solution c of each solved failure (the greedy one first, cycling); the units
    # failure has none (wrong, invalid and branching programs are never grafted)
    assert [[program for _, program in _branches(c.code)] for c in children] == [
        [_statements(MEDIAN), _statements(REVERSE)], [_statements(MEDIAN_2), _statements(REVERSE)]]
    assert [cue for cue, _ in _branches(children[0].code)][0] == "median"  # the word naming the operator


def test_each_solution_is_checked_on_the_failures_once(policy, scripted, monkeypatch):
    """Children share solutions: which failures a solution solves is run once per solution used,
    not once per child (the same children come out)."""
    import workflow_rl.policy.graft as policy_graft

    context = _context()
    proposer = GraftProposer(policy, checkpoint_id=None, samples=6, max_new_tokens=48)
    expected = asyncio.run(proposer.propose(context, 4, seed=3))
    # the premise: 4 children asked, 2 distinct ones, all sharing the one REVERSE solution
    assert len(expected) == 2
    assert all(_statements(REVERSE) in dict(_branches(c.code)).values() for c in expected)
    calls: list[str] = []
    real = policy_graft.solved_map

    async def counting(statements, problem_name, failures, same_answer):
        calls.append(ast.dump(ast.Module(statements, [])))
        return await real(statements, problem_name, failures, same_answer)

    monkeypatch.setattr(policy_graft, "solved_map", counting)
    assert asyncio.run(proposer.propose(context, 4, seed=3)) == expected
    # once each for MEDIAN, REVERSE and MEDIAN_2 (4 children would otherwise check 8 times)
    assert sorted(calls) == sorted(map(_statements, (MEDIAN, REVERSE, MEDIAN_2)))


def test_no_failures_no_children(policy):
    proposer = GraftProposer(policy, checkpoint_id=4, samples=2, max_new_tokens=8)
    assert asyncio.run(proposer.propose(replace(_context(), failures=()), 3, seed=0)) == []
    with pytest.raises(ValueError):
        GraftProposer(policy, checkpoint_id=4, samples=0)


def test_wide_takes_the_parents_other_failures_after_the_sample(policy, scripted):
    """The context's ``failures`` are the search's sample (what mutations see); ``wide`` adds the
    parent's other failures (``all_failures``) after them, up to ``max_failures``, one per problem."""
    full = _context()
    sample = replace(full, failures=full.failures[1:2], all_failures=full.failures)  # the sample: reverse only
    narrow = GraftProposer(policy, checkpoint_id=None, samples=6, max_new_tokens=48, max_failures=2)
    wide = GraftProposer(policy, checkpoint_id=None, samples=6, max_new_tokens=48, max_failures=2, wide=True)
    asyncio.run(narrow.propose(sample, 2, seed=3))
    asyncio.run(wide.propose(sample, 2, seed=3))

    def asked(call) -> list[int]:
        return [next(f.problem_id for f in full.failures if f.problem in prompt) for prompt in call[0]]

    assert [asked(c) for c in scripted[::2]] == [[12], [12, 11]]  # the sample first, then the others
    children = asyncio.run(wide.propose(sample, 2, seed=3))
    assert {_statements(MEDIAN), _statements(REVERSE)} <= {p for c in children for _, p in _branches(c.code)}
