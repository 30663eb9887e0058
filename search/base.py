"""Contracts of the search package (frozen dataclasses), shaped like mctx's ``base.py``.

`search` depends on `operators` and `storage`, and on the small :class:`Proposer` protocol that
the mutation operator, an LLM optimizer and the trained policy implement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


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


@dataclass(frozen=True)
class Candidate:
    """One proposed child workflow."""

    code: str
    source: str  # mutation | llm | policy
    prior: float | None = None  # PUCT prior (unnormalised probability), if the proposer has one
    generation: Generation | None = None
    description: str = ""  # what was changed, for the history shown to later proposals
    meta: dict[str, Any] = field(default_factory=dict)


class Proposer(Protocol):
    """Writes ``n`` child workflows for a parent."""

    name: str

    async def propose(self, context: ProposalContext, n: int, seed: int) -> list[Candidate]:
        """Return up to ``n`` candidates (deterministic for a fixed seed)."""
        ...
