"""The ``policy`` proposer: the learned policy writes the children of a search node.

For one expansion the policy samples ``G`` completions from ONE prompt, rendered in the policy's
format (:mod:`workflow_rl.policy.formats`, the one prompt function) from a problem the parent failed,
short notes on the other failures, and the parent's code. Every child carries a
:class:`search.base.Generation` with the exact prompt/completion token ids, the per-token behavior
logprobs recorded while sampling, the temperature, ``top_p = 1``, ``top_k = 0`` and the policy
version (``policy_checkpoints.id``; None = the untrained base). The search driver stores it in
``generations`` under one group key per expansion, which makes the siblings one GRPO group.
The completion is used as sampled, never repaired (docs/design.md rule 11): the child's code is the
program the format takes from it (a chat reply's fenced block), and an invalid program is stored
with its error and reward 0.

PUCT priors come from the policy's sequence logprobs: siblings get ``softmax(sum of token
logprobs)``, i.e. their probability under the policy renormalised over the drawn set.

:class:`MixedProposer` draws a fraction of the children from another proposer (mutations) for
exploration; those children are search data (source ``mutation``, no generation row).
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import replace

from search.base import Candidate, FailedExample, Generation, ProposalContext, Proposer
from workflow_rl.policy.formats import PLAIN
from workflow_rl.policy.model import Policy
from workflow_rl.policy.prompts import PromptSpec

SAMPLER = "transformers"
"""``generations.sampler`` of policy children (the in-process transformers sampler)."""


def failure_note(failure: FailedExample, limit: int = 160) -> str:
    """One short line about a failed problem: its text, the expected and the produced answer."""
    produced = failure.produced if failure.produced is not None else (failure.error or "nothing")
    return f"{failure.problem.strip()} (expected {failure.expected}, got {str(produced).strip()[:40]})"[:limit]


def expansion_prompt(context: ProposalContext, max_failures: int = 2, fmt=PLAIN) -> tuple[str, int | None]:
    """The policy prompt of one expansion in format ``fmt`` (a policy's ``format``) and the id of
    the problem it is conditioned on.

    The first failure is the prompt's problem; up to ``max_failures`` failures (that one included)
    are listed as notes. With no failures (a perfect parent) the prompt names no problem.
    """
    failures = list(context.failures[:max_failures])
    problem = failures[0].problem if failures else "(the parent solved every problem it was tried on)"
    prompt = fmt.prompt(PromptSpec.for_context(context), problem, parent_code=context.parent_code,
                        failures=[failure_note(f) for f in failures] or None)
    return prompt, (failures[0].problem_id if failures else None)


def sequence_priors(logprob_sums: list[float]) -> list[float]:
    """``softmax(logprob_sums)``: each child's policy probability renormalised over the siblings."""
    if not logprob_sums:
        return []
    top = max(logprob_sums)
    weights = [math.exp(s - top) for s in logprob_sums]
    total = sum(weights)
    return [w / total for w in weights]


class PolicyProposer:
    """Samples ``n`` children per expansion from a :class:`~workflow_rl.policy.model.Policy`.

    ``checkpoint_id`` is the policy version stored with every child (None = untrained base).
    Sampling is RL-valid: ``temperature > 0``, ``top_p = 1``, ``top_k = 0`` (docs/design.md rule 1).
    """

    name = "policy"

    def __init__(
        self,
        policy: Policy,
        checkpoint_id: int | None,
        temperature: float = 1.0,
        max_new_tokens: int = 160,
        max_failures: int = 2,
    ):
        """Wrap a loaded policy; ``max_failures`` bounds the failure notes in the prompt."""
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: policy children need T > 0 to carry logprobs")
        self.policy = policy
        self.checkpoint_id = checkpoint_id
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.max_failures = max_failures

    async def propose(self, context: ProposalContext, n: int, seed: int) -> list[Candidate]:
        """``n`` sampled children of ``context.parent_code`` (deterministic for a fixed seed)."""
        if n <= 0:
            return []
        prompt, problem_id = expansion_prompt(context, self.max_failures, self.policy.format)
        # Sampling is CPU/GPU bound; a worker thread keeps the event loop (sandbox I/O) responsive.
        samples = await asyncio.to_thread(
            self.policy.sample, [prompt], n, self.temperature, 1.0, self.max_new_tokens, seed
        )
        priors = sequence_priors([sum(s.behavior_logprobs) for s in samples])
        candidates = []
        for sample, prior in zip(samples, priors, strict=True):
            generation = Generation(
                prompt_text=prompt, completion_text=sample.text, sampler=SAMPLER,
                prompt_token_ids=sample.prompt_token_ids, completion_token_ids=sample.completion_token_ids,
                behavior_logprobs=sample.behavior_logprobs, temperature=sample.temperature,
                top_p=sample.top_p, top_k=0, policy_version=self.checkpoint_id, problem_id=problem_id,
                truncated=sample.truncated,
            )
            candidates.append(Candidate(
                code=sample.program, source="policy", prior=prior, generation=generation,
                description=f"policy v{self.checkpoint_id} sample",
                meta={"logprob_sum": sum(sample.behavior_logprobs), "finish_reason": sample.finish_reason},
            ))
        return candidates


class MixedProposer:
    """Policy children plus a fraction of children from another proposer (exploration).

    Each of the ``n`` slots is given to ``other`` with probability ``other_fraction`` (seeded), so
    the split is deterministic per expansion. When the policy proposes nothing, all ``n`` slots go
    to ``other``; fewer policy children than slots are not padded (an expansion costs one batch
    per child, so distinct policy children alone make the cheaper step).
    Priors: with ``m`` children in all, the policy's children share ``m_policy / m`` of the mass
    by their own priors; the others get ``1 / m`` each.
    """

    name = "mixed"

    def __init__(self, policy: PolicyProposer, other: Proposer, other_fraction: float = 0.25):
        """``other_fraction`` in [0, 1] is the expected share of children from ``other``."""
        if not 0.0 <= other_fraction <= 1.0:
            raise ValueError(f"other_fraction={other_fraction} must be in [0, 1]")
        self.policy = policy
        self.other = other
        self.other_fraction = other_fraction

    async def propose(self, context: ProposalContext, n: int, seed: int) -> list[Candidate]:
        """Children from both proposers, policy children first."""
        rng = random.Random(f"mixed:{seed}")
        n_other = sum(rng.random() < self.other_fraction for _ in range(n))
        n_policy = n - n_other
        policy_children = await self.policy.propose(context, n_policy, rng.randrange(2**31)) if n_policy else []
        # A policy proposer may return fewer children than asked (graft mode: its distinct verified
        # edits, often one). Those are not padded: padding spent most of each expansion's
        # evaluations on mutations (on calc, 3 of 4 children) and made a policy-steered round no
        # faster than a mutation round. Only an expansion the policy left empty is filled.
        if not policy_children:
            n_other = n
        other_children = await self.other.propose(context, n_other, rng.randrange(2**31)) if n_other else []
        total = len(policy_children) + len(other_children)
        if not total:
            return []
        share = len(policy_children) / total
        out = [replace(c, prior=(c.prior or 0.0) * share) for c in policy_children]
        out += [replace(c, prior=1.0 / total) for c in other_children]
        return out
