"""The built-in ``calc`` benchmark: seeded word problems that tool operators solve without any LLM.

Five families (see :mod:`workflow_rl.tasks.calc_gen`): arithmetic expressions, linear
equations, list statistics (mean/median/max/min/sum, named by a word), string transforms
(reverse/uppercase/count a character of a quoted string) and unit conversions. Each problem is
solved by one of 12 *recipes* (operator compositions); no single straight-line workflow solves
every family, so a perfect task-level score needs routing, and per-problem workflows can simply
pick the recipe. Test uses held-out phrasings and held-out statistic words, and surface cues
overlap across families ("= ?" in arithmetic, "total" in arithmetic and statistics, "How many" in
strings and units), so keyword routing learned on train/validation is brittle on test.

Scoring is exact: numbers compare by exact value ("4", "4.0", "8/2" are equal; "2.5" equals
"5/2"), text compares exactly after stripping surrounding whitespace. Tool answers are in the
canonical number form of :mod:`operators.tools_numbers`.

Best known scores (default options: seed 0, sizes train/validation/test = 200/60/100; measured by
``tests/workflow_rl/tasks/test_calc.py``, which fails if they change):

=====================================  =====  ==========  =====
workflow                               train  validation  test
=====================================  =====  ==========  =====
seed ``calculate``                     0.225  0.233       0.230
seed ``sum_numbers``                   0.045  0.033       0.020
hand-routed single workflow            1.000  1.000       0.520
per-recipe oracle (one per problem)    1.000  1.000       1.000
=====================================  =====  ==========  =====
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from operators.base import OpContext
from operators.tools_numbers import numbers_equal
from workflow_rl.errors import WorkflowRLError
from workflow_rl.tasks.base import SPLITS, BenchProblem, Score, text_or_number_equal
from workflow_rl.tasks.calc_gen import FAMILIES, RECIPES, generate_split
from workflow_rl.tasks.calc_workflows import ORACLE_WORKFLOWS, ROUTED_WORKFLOW, SEED_WORKFLOWS

CALC_OPERATORS: tuple[str, ...] = (
    "calculate",
    "solve_equation",
    "extract_numbers",
    "extract_number",
    "extract_expression",
    "extract_equation",
    "extract_list",
    "extract_quoted",
    "extract_units",
    "mean",
    "median",
    "sum_list",
    "max_list",
    "min_list",
    "sort_list",
    "reverse_text",
    "upper",
    "lower",
    "count_char",
    "convert_units",
    "majority_vote",
)
"""Operators calc workflows may call (tools only: the benchmark runs without an LLM)."""

DEFAULT_SIZES = {"train": 200, "validation": 60, "test": 100}
"""Default number of problems per split (small enough for CPU search and training)."""

DESCRIPTION = (
    "Short word problems of five kinds: arithmetic expressions, linear equations in x, statistics "
    "of a list of numbers (mean, median, largest, smallest, sum), transforms of a quoted word "
    "(reverse, uppercase, count a letter) and unit conversions. Answer with the bare result only: "
    "a number (e.g. 19, 2.5 or 7/3) or the transformed text."
)
"""Task header used in optimizer and policy prompts."""


def score_answer(output: str | None, reference: str, answer_type: str) -> Score:
    """Exact calc scoring: numbers by exact value, text exactly after strip."""
    if output is None:
        return Score(0.0, None)
    answer = str(output).strip()
    if answer_type == "number":
        ok = numbers_equal(answer, reference)
    else:
        ok = answer == reference
    return Score(1.0 if ok else 0.0, answer)


@dataclass
class CalcBenchmark:
    """The ``calc`` benchmark (implements :class:`workflow_rl.tasks.base.Benchmark`).

    Problems are generated on first use of a split and cached; the i-th problem of a split does
    not depend on the split sizes, and different seeds give different problems.
    """

    seed: int = 0
    train_size: int = DEFAULT_SIZES["train"]
    validation_size: int = DEFAULT_SIZES["validation"]
    test_size: int = DEFAULT_SIZES["test"]
    task_type: Literal["qa", "math", "code", "tool"] = "tool"
    description: str = DESCRIPTION
    operator_names: tuple[str, ...] = CALC_OPERATORS
    _cache: dict[str, list[BenchProblem]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for split in SPLITS:
            size = self.size(split)
            if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 100_000:
                raise WorkflowRLError(f"calc: {split}_size must be an int in 0..100000, got {size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise WorkflowRLError(f"calc: seed must be an int, got {self.seed!r}")

    @property
    def name(self) -> str:
        """Benchmark name stored in ``problems.benchmark``: ``calc`` (seed 0) or ``calc-s<seed>``."""
        return "calc" if self.seed == 0 else f"calc-s{self.seed}"

    def size(self, split: str) -> int:
        """Configured number of problems of ``split``."""
        return getattr(self, f"{split}_size")

    def problems(self, split: str) -> list[BenchProblem]:
        """All problems of ``split`` in a deterministic order."""
        if split not in SPLITS:
            raise WorkflowRLError(f"calc: unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if split not in self._cache:
            self._cache[split] = [
                BenchProblem(
                    key=f"{split}-{index:05d}",
                    split=split,
                    text=item.text,
                    reference=item.answer,
                    meta={
                        "family": item.family,
                        "recipe": item.recipe,
                        "phrasing": item.phrasing,
                        "held_out": item.held_out,
                        "answer_type": "text" if item.recipe in ("str_reverse", "str_upper") else "number",
                        "operand_key": item.operand_key,
                    },
                )
                for index, item in enumerate(generate_split(split, self.size(split), self.seed))
            ]
        return list(self._cache[split])

    async def score(self, problem: BenchProblem, output: str | None, ctx: OpContext) -> Score:
        """Exact score of ``output`` against the problem's reference."""
        return score_answer(output, problem.reference, problem.meta.get("answer_type", "number"))

    def same_answer(self, output: object, expected: str) -> bool:
        """Calc's answer check for search's routing and graft checks: text after strip, or numbers
        by exact value ('4' == '4.0' == '8/2'). Looser than :meth:`score` (no answer type: a failing
        example carries only the expected text), as search has always compared calc answers."""
        return text_or_number_equal(output, expected)

    def seed_workflows(self) -> dict[str, str]:
        """Weak straight-line seeds (see the score table in the module docstring)."""
        return dict(SEED_WORKFLOWS)

    def oracle_workflows(self) -> dict[str, str]:
        """One workflow per recipe; each problem names its recipe in ``meta['recipe']``."""
        return dict(ORACLE_WORKFLOWS)

    def oracle_for(self, problem: BenchProblem) -> str:
        """The oracle workflow of one problem (its recipe's workflow)."""
        return ORACLE_WORKFLOWS[problem.meta["recipe"]]

    def routed_workflow(self) -> str:
        """The best single hand-written task-level workflow (keyword routing from train phrasings)."""
        return ROUTED_WORKFLOW


__all__ = ["CALC_OPERATORS", "CalcBenchmark", "FAMILIES", "RECIPES", "score_answer"]
