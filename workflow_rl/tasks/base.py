"""The benchmark protocol: problems by split, a scorer, an operator set and seed workflows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from operators.base import OpContext
from operators.tools_numbers import numbers_equal

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
    """What search, evaluation and the learner need from a benchmark.

    Optional, outside the protocol: ``same_answer(output, expected) -> bool``, whether a program's
    output is a failing example's expected answer. Search's routing and graft checks run programs
    on failing validation problems with tool operators and judge them with it (no ``BenchProblem``
    or sandbox there, so ``score`` cannot be used); see :func:`answer_check`.
    """

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


def text_or_number_equal(output: Any, expected: str) -> bool:
    """Exact text match after strip, or equal exact numbers ('4' == '4.0' == '8/2').

    Calc's answer check (:meth:`workflow_rl.tasks.calc.CalcBenchmark.same_answer`) and, for now,
    that of every benchmark without its own: search applied it to all benchmarks before the check
    became the benchmark's call, so this keeps their search behaviour unchanged.
    """
    text = str(output).strip()
    return text == str(expected).strip() or numbers_equal(text, str(expected).strip())


def answer_check(bench: Any) -> Callable[[Any, str], bool]:
    """The answer check search should use for ``bench`` (``search.proposers.routing.AnswerCheck``): its own
    ``same_answer`` when it has one, else :func:`text_or_number_equal`."""
    return getattr(bench, "same_answer", None) or text_or_number_equal
