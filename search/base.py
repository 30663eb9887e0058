"""Contracts of the search package (frozen dataclasses), shaped like mctx's ``base.py``.

`search` depends on `operators` and `storage`, and on the small :class:`Proposer` protocol that
the mutation operator, an LLM optimizer and the trained policy implement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class FailedExample:
    """A problem the parent workflow got wrong: shown to LLM/policy proposers."""

    problem_id: int
    problem: str
    expected: str
    produced: str | None
    error: str | None = None


@dataclass(frozen=True)
class ProposalContext:
    """Everything a proposer may look at when expanding a node."""

    benchmark: str
    task_description: str
    operator_names: tuple[str, ...]
    parent_workflow_id: int
    parent_code: str
    parent_score: float
    failures: tuple[FailedExample, ...] = ()
    history: tuple[tuple[str, float], ...] = ()  # (summary of an earlier modification, its score)
    round: int = 0
    passes: tuple[str, ...] = ()  # texts of problems the parent solved (routing cues avoid their words)
    # Every failure of the parent on the validation split (``failures`` is a sample of at most the
    # search's max_failures): for a proposer that can use more, e.g. the graft policy.
    all_failures: tuple[FailedExample, ...] = ()


@dataclass(frozen=True)
class Generation:
    """Sampler provenance of a policy/LLM candidate, stored in ``generations``."""

    prompt_text: str
    completion_text: str
    sampler: str
    prompt_token_ids: tuple[int, ...] | None = None
    completion_token_ids: tuple[int, ...] | None = None
    behavior_logprobs: tuple[float, ...] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    policy_version: int | None = None  # policy_checkpoints.id; None = untrained base
    problem_id: int | None = None
    truncated: bool = False


Source = Literal["mutation", "llm", "policy"]
"""Who wrote a child (stored as ``workflows.source``; seeds are ``seed``)."""


@dataclass(frozen=True)
class Candidate:
    """One proposed child workflow."""

    code: str
    source: Source
    prior: float | None = None  # PUCT prior (unnormalised probability), if the proposer has one
    generation: Generation | None = None
    description: str = ""  # what was changed, for the history shown to later proposals
    meta: dict[str, Any] = field(default_factory=dict)
    policy_version: int | None = None
    """Checkpoint whose code this child contains without being its exact sample (a graft); a policy
    sample's version is ``generation.policy_version``. None: no policy wrote it, or the base policy."""


class Proposer(Protocol):
    """Writes ``n`` child workflows for a parent."""

    name: str

    async def propose(self, context: ProposalContext, n: int, seed: int) -> list[Candidate]:
        """Return up to ``n`` candidates (deterministic for a fixed seed)."""
        ...


@dataclass(frozen=True)
class EvalRecord:
    """Reward of one (workflow, problem, repeat) execution, as stored in ``evaluations``."""

    problem_id: int
    repeat: int
    reward: float
    output: str | None = None
    error: str | None = None
    cost: float | None = 0.0


@dataclass(frozen=True)
class EvalBatch:
    """What evaluating one workflow on a batch returned: every record, and how many were new."""

    records: tuple[EvalRecord, ...]
    executed: int  # executions run now (stored rows that were reused are not counted)

    @property
    def mean_reward(self) -> float:
        """Mean reward over the records, summed in (problem, repeat) order (0 when empty)."""
        rs = [r.reward for r in sorted(self.records, key=lambda r: (r.problem_id, r.repeat))]
        return sum(rs) / len(rs) if rs else 0.0


@dataclass(frozen=True)
class ProblemRef:
    """A stored validation problem as search sees it (for batches and failure examples)."""

    problem_id: int
    text: str
    expected: str


class Evaluator(Protocol):
    """Runs workflows on stored problems and persists one evaluation row per execution.

    Implemented by ``workflow_rl.loop.evaluation``; ``search`` only sees this protocol so that it
    never imports ``workflow_rl`` (dependency direction in docs/design.md).
    """

    def validation_problems(self) -> list[ProblemRef]:
        """The benchmark's validation problems, in a deterministic order."""
        ...

    async def evaluate(
        self, run_id: int, workflow_id: int, code: str, problem_ids: Sequence[int], repeats: int
    ) -> EvalBatch:
        """Evaluate ``code`` on ``problem_ids`` x ``range(repeats)``, skipping stored rows."""
        ...
