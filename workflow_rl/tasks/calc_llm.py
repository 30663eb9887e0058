"""``calc-llm``: the built-in ``calc`` word problems posed to an LLM executor.

The problems are exactly ``calc``'s (same generator, splits, seeds and size options, see
:mod:`workflow_rl.tasks.calc`), but the benchmark is a math/QA task: its seed workflows only call
LLM operators (hand-written, as AFlow's baselines: one ``answer_generate``, one ``custom`` with an
answer-only instruction, and a self-consistency ``sc_ensemble`` of three short answers), while the
search may also use calc's tool operators, so a searched workflow can mix LLM calls and tools.

Scoring is calc's exact comparison (numbers by exact value, text exactly) applied to the *final
answer* of the output, which :func:`final_answer` reads from free text, because a small model writes
messy replies ("The answer to the final result is 29.", "Reverse: 'olan'."):

1. an output that already is the bare answer (what calc's tools return) is taken whole;
2. else the content of the last ``<answer>`` tag or ``\\boxed{}``, if any, else the text after the last
   "answer is" / "answer:" marker, if any, else the whole text;
3. in that text, a number answer is the *last* number (``-3``, ``2.5``, ``7/3``, ``1,200``) and a text
   answer the last quoted string, else the last word.

So a reply is right only when the number or word it ends on is right; restating the question's own
numbers earlier does not count, but a final guess that happens to be right does (as GSM8K's "last
number" rule). The problems' meta sets the LLM operators' settings through ``ctx.extras``:
``llm_lenient`` (forgiving reply parsing, see :mod:`operators.llm_ops`), ``llm_max_tokens`` and
``llm_temperature`` (benchmark options ``max_tokens`` and ``temperature``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from operators.base import OpContext
from workflow_rl.errors import WorkflowRLError
from workflow_rl.tasks.base import BenchProblem, Score
from workflow_rl.tasks.calc import CALC_OPERATORS, DEFAULT_SIZES, CalcBenchmark, score_answer
from workflow_rl.tasks.scoring import last_boxed

LLM_OPERATORS: tuple[str, ...] = ("custom", "answer_generate", "sc_ensemble", "format", "review", "revise")
"""LLM operators of calc-llm (the seeds use the first three); calc's tools come after them."""

CALC_LLM_OPERATORS: tuple[str, ...] = LLM_OPERATORS + CALC_OPERATORS
"""Everything a calc-llm workflow may call: LLM operators and calc's tool operators."""

DESCRIPTION = (
    "Short word problems of five kinds: arithmetic expressions, linear equations in x, statistics "
    "of a list of numbers (mean, median, largest, smallest, sum), transforms of a quoted word "
    "(reverse, uppercase, count a letter) and unit conversions. Use the LLM operators, the exact tool "
    "operators, or both. Answer with the bare result only: a number (e.g. 19, 2.5 or 7/3) or the "
    "transformed text."
)
"""Task header used in optimizer and policy prompts."""

ANSWER_INSTRUCTION = "Solve the problem. Reply with only the final answer (a number or a single word), nothing else."
"""The instruction of the ``custom`` seeds."""

SEED_WORKFLOWS: dict[str, str] = {
    "answer_generate": """async def solve(problem, ops):
    return await ops.answer_generate(problem)
""",
    "custom": f"""async def solve(problem, ops):
    return await ops.custom({ANSWER_INSTRUCTION!r}, problem)
""",
    "sc_ensemble": f"""async def solve(problem, ops):
    answers = []
    for _ in range(3):
        answers.append(await ops.custom({ANSWER_INSTRUCTION!r}, problem))
    return await ops.sc_ensemble(answers, problem)
""",
}
"""Hand-written LLM-only seed workflows (AFlow-style baselines)."""

DEFAULT_MAX_TOKENS = 128
"""Completion budget of one LLM call of calc-llm (benchmark option ``max_tokens``)."""
DEFAULT_TEMPERATURE = 0.7
"""Executor sampling temperature of calc-llm (benchmark option ``temperature``)."""

_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])|-?\d+(?:\.\d+)?(?:\s*/\s*\d+)?")
_MARKER = re.compile(r"answer\s*(?:is|:|=)", re.IGNORECASE)
_QUOTED = re.compile(r"'([^'\n]+)'|\"([^\"\n]+)\"|`([^`\n]+)`")
_WORD = re.compile(r"[A-Za-z]+")
_BARE_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def _answer_part(text: str) -> str:
    """The part of a reply that holds its final answer (tag, box, after a marker, else all of it)."""
    tags = re.findall(r"<answer>(.*?)(?:</answer>|\Z)", text, flags=re.DOTALL | re.IGNORECASE)
    if tags and tags[-1].strip():
        return tags[-1]
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    markers = list(_MARKER.finditer(text))
    if markers and text[markers[-1].end():].strip():
        return text[markers[-1].end():]
    return text


def final_answer(output: str | None, answer_type: str) -> str | None:
    """The final answer of a (possibly messy) output: a number token or a word; None when there is none.

    See the module docstring for the rules; a bare answer (a tool's output) is returned unchanged.
    """
    if output is None:
        return None
    text = str(output).strip()
    if answer_type == "number":
        if _BARE_NUMBER.fullmatch(text):
            return text
        numbers = _NUMBER.findall(_answer_part(text))
        return numbers[-1].replace(",", "").replace(" ", "") if numbers else None
    if _WORD.fullmatch(text):
        return text
    part = _answer_part(text)
    quoted = _QUOTED.findall(part)
    if quoted:
        return next(q for q in quoted[-1] if q).strip()
    words = _WORD.findall(part)
    return words[-1] if words else None


def score_llm_answer(output: str | None, reference: str, answer_type: str) -> Score:
    """calc's exact comparison of the final answer read from ``output`` (see :func:`final_answer`)."""
    answer = final_answer(output, answer_type)
    if answer is None:
        return Score(0.0, None if output is None else "")
    return score_answer(answer, reference, answer_type)


@dataclass
class CalcLLMBenchmark(CalcBenchmark):
    """The ``calc-llm`` benchmark (implements :class:`workflow_rl.tasks.base.Benchmark`)."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    task_type: Literal["qa", "math", "code", "tool"] = "math"
    description: str = DESCRIPTION
    operator_names: tuple[str, ...] = CALC_LLM_OPERATORS

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or not 1 <= self.max_tokens <= 8192:
            raise WorkflowRLError(f"calc-llm: max_tokens must be an int in 1..8192, got {self.max_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not 0.0 <= self.temperature <= 2.0:
            raise WorkflowRLError(f"calc-llm: temperature must be a number in 0..2, got {self.temperature!r}")

    @property
    def name(self) -> str:
        """``calc-llm`` (seed 0) or ``calc-llm-s<seed>``; the LLM settings are not part of the name."""
        return "calc-llm" if self.seed == 0 else f"calc-llm-s{self.seed}"

    def problems(self, split: str) -> list[BenchProblem]:
        """calc's problems of ``split`` with the LLM operators' settings added to their meta."""
        settings = {"llm_lenient": True, "llm_max_tokens": self.max_tokens, "llm_temperature": float(self.temperature)}
        return [replace(p, meta={**p.meta, **settings}) for p in super().problems(split)]

    async def score(self, problem: BenchProblem, output: str | None, ctx: OpContext) -> Score:
        """Exact score of the final answer read from ``output`` (see :func:`final_answer`)."""
        return score_llm_answer(output, problem.reference, problem.meta.get("answer_type", "number"))

    def seed_workflows(self) -> dict[str, str]:
        """The LLM-only seeds (:data:`SEED_WORKFLOWS`)."""
        return dict(SEED_WORKFLOWS)


def calc_llm_benchmark(seed: int = 0, train_size: int = DEFAULT_SIZES["train"],
                       validation_size: int = DEFAULT_SIZES["validation"], test_size: int = DEFAULT_SIZES["test"],
                       max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = DEFAULT_TEMPERATURE) -> CalcLLMBenchmark:
    """The registry's factory: calc's options plus ``max_tokens`` and ``temperature``."""
    return CalcLLMBenchmark(seed=seed, train_size=train_size, validation_size=validation_size, test_size=test_size,
                            max_tokens=max_tokens, temperature=temperature)


__all__ = ["CALC_LLM_OPERATORS", "CalcLLMBenchmark", "SEED_WORKFLOWS", "calc_llm_benchmark", "final_answer",
           "score_llm_answer"]
