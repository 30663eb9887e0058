"""The ``graft`` mode of the policy proposer: the policy writes per-problem programs, search routes them.

The learner trains the policy on per-problem prompts (problem in, one workflow out). A small
policy never sees the expansion prompt (parent code + failure notes) in training, so the children
it writes there are mostly not even valid programs (measured on calc with builtin:tiny: 0 valid of
36 in a round). Graft mode asks the policy what it was trained for: for each distinct problem the
parent failed (up to ``max_failures``), the policy's greedy program and ``samples`` sampled ones
are drawn from that problem's per-problem prompt (``Policy.prompt``, the prompt training uses). The distinct straight-line programs that yield the failing problem's
expected answer on the host (tool operators only, as the mutation proposer's routing check) are
its solutions; one becomes a branch ``if "<cue>" in problem: ...`` of the parent
(:mod:`search.proposers.graft`). Every child holds a branch for every failure with a solution (child ``c``
takes solution ``c``, cycling), so a better policy makes bigger steps per evaluation; children
differ only where a failure has several solutions, so there are often fewer than ``n`` (the
mixed proposer does not pad them, see :class:`workflow_rl.policy.proposer.MixedProposer`).

Children are edits of the parent, not what the policy sampled, so they are search data
(docs/design.md rule 11): source ``mutation``, no generation row; their ``policy_version`` records the checkpoint
whose samples they contain. The failing problems are validation problems, which never enter
training anyway.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from operators.validate import validation_error
from search.base import Candidate, ProposalContext
from search.proposers.graft import best_cue, graft, solved_map, solves_example, straight_line
from search.proposers.routing import AnswerCheck
from workflow_rl.policy.model import Policy
from workflow_rl.policy.prompts import PromptSpec
from workflow_rl.tasks.base import text_or_number_equal


class GraftProposer:
    """Children = parent + verified branches written by the policy for the parent's failures."""

    name = "policy-graft"

    def __init__(
        self,
        policy: Policy,
        checkpoint_id: int | None,
        temperature: float = 1.0,
        max_new_tokens: int = 80,
        samples: int = 64,
        max_failures: int = 6,
        same_answer: AnswerCheck = text_or_number_equal,
        wide: bool = False,
    ):
        """``samples`` programs drawn per failing problem (shared by the children); at most
        ``max_failures`` problems. ``same_answer`` judges whether a program's output is a failing
        problem's expected answer: the benchmark's check (:func:`workflow_rl.tasks.base.answer_check`).
        ``wide``: past the context's sample of failures (the search's ``max_failures``, which the other
        proposers see), take the parent's other failures too, up to ``max_failures``."""
        if temperature <= 0 or samples < 1 or max_failures < 1:
            raise ValueError(f"temperature={temperature}, samples={samples}, max_failures={max_failures}: "
                             "need T > 0 and at least one sample of one failure")
        self.policy = policy
        self.checkpoint_id = checkpoint_id
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.samples = samples
        self.max_failures = max_failures
        self.same_answer = same_answer
        self.wide = wide

    async def propose(self, context: ProposalContext, n: int, seed: int) -> list[Candidate]:
        """Up to ``n`` distinct children (none when the policy solves none of the failures)."""
        seen_ids: set[int] = set()
        failures = []
        pool = context.failures + (context.all_failures if self.wide else ())  # the context's sample first
        for f in pool:  # one per problem: a problem failed twice (repeats) is one target
            if f.problem_id not in seen_ids:
                seen_ids.add(f.problem_id)
                failures.append(f)
        failures = failures[: self.max_failures]
        if n <= 0 or not failures:
            return []
        spec = PromptSpec.for_context(context)
        prompts = [self.policy.prompt(spec, f.problem) for f in failures]
        k = self.samples
        drawn = await asyncio.to_thread(
            self.policy.sample, prompts, k, self.temperature, 1.0, self.max_new_tokens, seed)
        # The policy's greedy program per failure is its first solution when it solves it: it is
        # what training sharpens fastest (a trained argmax is right far more often than one sample).
        greedy = await asyncio.to_thread(self.policy.sample, prompts, 1, 0.0, 1.0, self.max_new_tokens, seed)
        # Every program drawn for a failure (the greedy one first) is checked on it; the distinct
        # ones that solve it are that failure's solutions. Child c takes solution c (cycling) of
        # every solved failure, so each child holds a branch for every failure the policy solved
        # at all: a policy that solves more takes bigger steps per evaluated child.
        solutions: list[list[tuple[list, str]]] = []
        for i, failure in enumerate(failures):
            found, tried = [], set()
            for sample in [greedy[i], *drawn[i * k: (i + 1) * k]]:
                if sample.program in tried:  # a confident policy repeats itself: parse and run each once
                    continue
                tried.add(sample.program)
                body = straight_line(sample.program)
                if body is not None and await solves_example(body[0], body[1], failure, self.same_answer):
                    found.append(body)
            solutions.append(found)
        out: list[Candidate] = []
        seen = {context.parent_code.strip()}
        passes = list(context.passes)
        # Which failures a solution solves (for its cue) is run once per solution, on first use:
        # children share solutions, and most solutions are never used by any child.
        solved: dict[tuple[int, int], dict[int, bool]] = {}
        for child in range(n):
            branches, notes, taken = [], [], set()
            for failure, found in zip(failures, solutions, strict=True):
                for j in range(len(found)):  # this child's solution first, then the others
                    key = (failure.problem_id, (child + j) % len(found))
                    statements, problem_name = found[key[1]]
                    if key not in solved:
                        solved[key] = await solved_map(statements, problem_name, failures, self.same_answer)
                    cue = await best_cue(statements, problem_name, failure, failures, passes, taken, solved[key])
                    if cue is None:
                        continue  # solves it, but no word routes it without breaking others
                    taken.add(cue)
                    branches.append((cue, statements))
                    notes.append(cue)
                    break
            code = graft(context.parent_code, branches) if branches else None
            if code is None or code.strip() in seen or validation_error(code, context.operator_names) is not None:
                continue
            seen.add(code.strip())
            out.append(Candidate(
                code=code, source="mutation",
                description=f"policy v{self.checkpoint_id} branches for {', '.join(repr(c) for c in notes)}",
                meta={"mutation": "policy_graft", "branches": len(branches)}, policy_version=self.checkpoint_id,
            ))
        # Uniform PUCT priors: the children differ in which failures got a verified branch, not in
        # how likely the policy found them.
        return [replace(c, prior=1.0 / len(out)) for c in out]
