"""The ``graft`` mode of the policy proposer: the policy writes per-problem programs, search routes them.

The learner trains the policy on per-problem prompts (problem in, one workflow out). A small
policy never sees the expansion prompt (parent code + failure notes) in training, so the children
it writes there are mostly not even valid programs (measured on calc with builtin:tiny: 0 valid of
36 in a round). Graft mode asks the policy what it was trained for: for each distinct problem the
parent failed (up to ``max_failures``), ``samples`` programs per child are drawn from that
problem's per-problem prompt (:func:`workflow_rl.prompts.policy_prompt_for`, the prompt training
uses); the first child tries the policy's greedy program first. The first straight-line program
that yields the failing problem's expected answer on the host (tool operators only, as the
mutation proposer's routing check) becomes a branch ``if "<cue>" in problem: ...`` of the parent
(:mod:`search.graft`). A child holds the verified branches of every failure it found one for, so
a better policy makes bigger steps per evaluation.

Children are edits of the parent, not what the policy sampled, so they are search data (DESIGN
rule 11): source ``mutation``, no generation row; their ``policy_version`` records the checkpoint
whose samples they contain. The failing problems are validation problems, which never enter
training anyway.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from search.base import Candidate, ProposalContext
from search.graft import best_cue, graft, solves_example, straight_line
from search.mutations import validation_error
from workflow_rl.policy import Policy
from workflow_rl.prompts import policy_prompt_for


class GraftProposer:
    """Children = parent + verified branches written by the policy for the parent's failures."""

    name = "policy-graft"

    def __init__(
        self,
        policy: Policy,
        checkpoint_id: int | None,
        temperature: float = 1.0,
        max_new_tokens: int = 80,
        samples: int = 4,
        max_failures: int = 6,
    ):
        """``samples`` programs per failing problem and child; at most ``max_failures`` problems."""
        if temperature <= 0 or samples < 1 or max_failures < 1:
            raise ValueError(f"temperature={temperature}, samples={samples}, max_failures={max_failures}: "
                             "need T > 0 and at least one sample of one failure")
        self.policy = policy
        self.checkpoint_id = checkpoint_id
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.samples = samples
        self.max_failures = max_failures

    async def propose(self, context: ProposalContext, n: int, seed: int) -> list[Candidate]:
        """Up to ``n`` distinct children (fewer when the policy solves none of the failures)."""
        seen_ids: set[int] = set()
        failures = []
        for f in context.failures:  # one per problem: a problem failed twice (repeats) is one target
            if f.problem_id not in seen_ids:
                seen_ids.add(f.problem_id)
                failures.append(f)
        failures = failures[: self.max_failures]
        if n <= 0 or not failures:
            return []
        prompts = [policy_prompt_for(context.task_description, context.operator_names, f.problem) for f in failures]
        k = self.samples
        drawn = await asyncio.to_thread(
            self.policy.sample, prompts, n * k, self.temperature, 1.0, self.max_new_tokens, seed)
        # The policy's greedy program per failure is tried first by child 0: it is what training
        # sharpens fastest (a trained policy's argmax is right far more often than one sample at T).
        greedy = await asyncio.to_thread(self.policy.sample, prompts, 1, 0.0, 1.0, self.max_new_tokens, seed)
        out: list[Candidate] = []
        seen = {context.parent_code.strip()}
        for child in range(n):
            branches, notes, taken = [], [], set()
            for i, failure in enumerate(failures):
                first = i * n * k + child * k
                tries = ([greedy[i]] if child == 0 else []) + drawn[first: first + k]
                for sample in tries:
                    body = straight_line(sample.text)
                    if body is None or not await solves_example(body[0], body[1], failure):
                        continue
                    cue = await best_cue(body[0], body[1], failure, failures, list(context.passes), taken)
                    if cue is None:
                        continue  # solves it, but no word routes it without breaking others
                    taken.add(cue)
                    branches.append((cue, body[0]))
                    notes.append(cue)
                    break
            code = graft(context.parent_code, branches) if branches else None
            if code is None or code.strip() in seen or validation_error(code, context.operator_names) is not None:
                continue
            seen.add(code.strip())
            out.append(Candidate(
                code=code, source="mutation",
                description=f"policy v{self.checkpoint_id} branches for {', '.join(repr(c) for c in notes)}",
                meta={"mutation": "policy_graft", "policy_version": self.checkpoint_id, "branches": len(branches)},
            ))
        # Uniform PUCT priors: the children differ in which failures got a verified branch, not in
        # how likely the policy found them.
        return [replace(c, prior=1.0 / len(out)) for c in out]
