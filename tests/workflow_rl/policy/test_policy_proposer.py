"""The policy proposer: exact generations, PUCT priors from sequence logprobs, mixed exploration."""

from __future__ import annotations

import asyncio
import math

import pytest

from search.base import Candidate, FailedExample, ProposalContext
from workflow_rl.policy.model import Policy
from workflow_rl.policy.prompts import COMPLETION_MARKER, policy_prompt_for
from workflow_rl.policy.proposer import MixedProposer, PolicyProposer, expansion_prompt, sequence_priors
from workflow_rl.tasks import get_benchmark


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.load("builtin:tiny", device="cpu")


def _context() -> ProposalContext:
    bench = get_benchmark("calc")
    parent = bench.seed_workflows()["calculate"]
    failures = (
        FailedExample(11, "Find the median of 3, 9, 4.", "4", "16"),
        FailedExample(12, "Reverse the text 'kodu'.", "udok", None, "calculate: bad expression"),
        FailedExample(13, "Convert 2 km to m.", "2000", "2"),
    )
    return ProposalContext(
        benchmark="calc", task_description=bench.description, operator_names=tuple(bench.operator_names),
        parent_workflow_id=7, parent_code=parent, parent_score=0.25, failures=failures,
    )


def test_sequence_priors_are_softmax_of_sums():
    # softmax([-1, -2]) = [1 / (1 + e^-1), e^-1 / (1 + e^-1)] = [0.7310585786, 0.2689414214]
    assert sequence_priors([-1.0, -2.0]) == pytest.approx([0.7310585786, 0.2689414214], abs=1e-9)
    assert sequence_priors([-300.0, -300.0]) == pytest.approx([0.5, 0.5])  # no underflow
    assert sequence_priors([]) == []


def test_expansion_prompt_uses_the_shared_renderer():
    context = _context()
    prompt, problem_id = expansion_prompt(context, max_failures=2)
    assert problem_id == 11
    notes = ["Find the median of 3, 9, 4. (expected 4, got 16)",
             "Reverse the text 'kodu'. (expected udok, got calculate: bad expression)"]
    assert prompt == policy_prompt_for(context.task_description, context.operator_names,
                                       "Find the median of 3, 9, 4.", context.parent_code, notes)
    assert context.parent_code.strip() in prompt and prompt.endswith(COMPLETION_MARKER)
    assert "Convert 2 km" not in prompt  # only max_failures notes


def test_policy_children_carry_exact_generations(policy):
    proposer = PolicyProposer(policy, checkpoint_id=None, temperature=1.0, max_new_tokens=24)
    context = _context()
    children = asyncio.run(proposer.propose(context, 3, seed=5))
    again = asyncio.run(proposer.propose(context, 3, seed=5))
    assert [c.code for c in children] == [c.code for c in again]  # deterministic per seed
    assert len(children) == 3
    assert sum(c.prior for c in children) == pytest.approx(1.0)
    prompt, _ = expansion_prompt(context, 2)
    for child in children:
        g = child.generation
        assert child.source == "policy" and g is not None and g.sampler == "transformers"
        assert g.prompt_text == prompt and tuple(policy.encode(prompt)) == g.prompt_token_ids
        assert g.completion_text == child.code == policy.decode_completion(g.completion_token_ids)
        assert len(g.behavior_logprobs) == len(g.completion_token_ids)
        assert (g.temperature, g.top_p, g.top_k, g.policy_version, g.problem_id) == (1.0, 1.0, 0, None, 11)
        assert child.meta["logprob_sum"] == pytest.approx(sum(g.behavior_logprobs))
    # priors are the softmax of the sequence logprobs
    sums = [c.meta["logprob_sum"] for c in children]
    assert [c.prior for c in children] == pytest.approx(sequence_priors(sums))
    # the learner's teacher-forced logprobs reproduce the behavior logprobs (mismatch ~ 0)
    scored = policy.score([list(c.generation.prompt_token_ids) for c in children],
                          [list(c.generation.completion_token_ids) for c in children], 1.0)
    for child, lp in zip(children, scored, strict=True):
        assert max(abs(a - b) for a, b in zip(lp, child.generation.behavior_logprobs, strict=True)) < 1e-4


class _Fixed:
    """A deterministic stand-in 'other' proposer that writes a known valid workflow."""

    name = "fixed"

    async def propose(self, context, n, seed):
        return [Candidate(code=f"async def solve(problem, ops):\n    return {i}\n", source="mutation")
                for i in range(n)]


def test_mixed_proposer_shares_and_priors(policy):
    policy_prop = PolicyProposer(policy, checkpoint_id=None, max_new_tokens=8)
    context = _context()
    only_other = asyncio.run(MixedProposer(policy_prop, _Fixed(), 1.0).propose(context, 4, seed=1))
    assert [c.source for c in only_other] == ["mutation"] * 4
    assert [c.prior for c in only_other] == pytest.approx([0.25] * 4)
    only_policy = asyncio.run(MixedProposer(policy_prop, _Fixed(), 0.0).propose(context, 4, seed=1))
    assert [c.source for c in only_policy] == ["policy"] * 4
    mixed = asyncio.run(MixedProposer(policy_prop, _Fixed(), 0.5).propose(context, 8, seed=3))
    n_other = sum(c.source == "mutation" for c in mixed)
    assert 0 < n_other < 8
    assert sum(c.prior for c in mixed) == pytest.approx(1.0)
    assert all(c.prior == pytest.approx(1 / 8) for c in mixed if c.source == "mutation")
    assert all(math.isfinite(c.prior) for c in mixed)
    with pytest.raises(ValueError):
        MixedProposer(policy_prop, _Fixed(), 1.5)


class _Empty:
    """A policy-side proposer that found nothing to propose (graft mode with no verified branch)."""

    name = "empty"

    async def propose(self, context, n, seed):
        return []


def test_mixed_proposer_fills_slots_the_policy_left_empty():
    children = asyncio.run(MixedProposer(_Empty(), _Fixed(), 0.0).propose(_context(), 4, seed=1))
    assert [c.source for c in children] == ["mutation"] * 4
    assert sum(c.prior for c in children) == pytest.approx(1.0)


class _One:
    """A policy-side proposer with one distinct child (graft mode: the same verified branches)."""

    name = "one"

    async def propose(self, context, n, seed):
        return [Candidate(code="async def solve(problem, ops):\n    return 'policy'\n", source="mutation", prior=1.0)]


def test_mixed_proposer_does_not_pad_fewer_policy_children():
    # every slot is the policy's; it wrote one child: the expansion is that child alone (one batch
    # of evaluations instead of four, three of them on mutations)
    children = asyncio.run(MixedProposer(_One(), _Fixed(), 0.0).propose(_context(), 4, seed=1))
    assert [c.code for c in children] == ["async def solve(problem, ops):\n    return 'policy'\n"]
    assert children[0].prior == pytest.approx(1.0)
    # with a mutation share, the mutation slots drawn for the expansion are still filled
    mixed = asyncio.run(MixedProposer(_One(), _Fixed(), 0.5).propose(_context(), 8, seed=3))
    assert mixed[0].code.endswith("'policy'\n") and 1 < len(mixed) < 8
    assert sum(c.prior for c in mixed) == pytest.approx(1.0)
