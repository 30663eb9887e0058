"""The benchmark protocol: problems by split, a scorer, an operator set and seed workflows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from operators.base import OpContext

SPLITS = ("train", "validation", "test")
"""Split names. Validation drives search selection; test is never used for selection or training."""


@dataclass(frozen=True)
class BenchProblem:
    """One problem as a benchmark defines it (before it is stored in ``problems``)."""

    key: str
    split: str
    text: str
    reference: Any
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    """A scored output: reward in [0, 1] and the answer that was extracted and compared."""

    reward: float
    answer: str | None = None


class Benchmark(Protocol):
    """What search, evaluation and the learner need from a benchmark."""

    name: str
    task_type: Literal["qa", "math", "code", "tool"]
    description: str  # task header used in optimizer / policy prompts
    operator_names: tuple[str, ...]  # the operator set workflows of this benchmark may call

    def problems(self, split: str) -> list[BenchProblem]:
        """All problems of one split, in a deterministic order."""
        ...

    async def score(self, problem: BenchProblem, output: str | None, ctx: OpContext) -> Score:
        """Score a workflow's output (code tasks run tests through ``ctx.run_code``)."""
        ...

    def seed_workflows(self) -> dict[str, str]:
        """Named seed workflow programs: the weak starting point of round 0."""
        ...
