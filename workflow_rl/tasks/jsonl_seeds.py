"""Operator sets and seed workflows per task type (QA / math / code), after AFlow's.

Seeds are deliberately simple starting points for round 0 of a search, as in AFlow: one direct
call, plus one small composition per task type that search can build on.
"""

from __future__ import annotations

OPERATOR_SETS: dict[str, tuple[str, ...]] = {
    "qa": ("custom", "answer_generate", "sc_ensemble", "review", "revise", "format"),
    "math": ("custom", "answer_generate", "sc_ensemble", "review", "revise", "format", "programmer",
             "calculate", "solve_equation"),
    "code": ("custom", "code_generate", "test", "sc_ensemble", "review", "revise"),
}
"""Operators workflows of each task type may call (LLM operators plus a few tools for math)."""

SEED_WORKFLOWS: dict[str, dict[str, str]] = {
    "qa": {
        "custom_format": '''async def solve(problem, ops):
    answer = await ops.custom("Answer the question. Think briefly, then state the answer.", problem)
    return await ops.format(problem, answer)
''',
        "answer_generate": '''async def solve(problem, ops):
    return await ops.answer_generate(problem)
''',
    },
    "math": {
        "answer_generate": '''async def solve(problem, ops):
    return await ops.answer_generate(problem)
''',
        "ensemble3": '''async def solve(problem, ops):
    solutions = []
    for _ in range(3):
        solutions.append(await ops.answer_generate(problem))
    return await ops.sc_ensemble(solutions, problem)
''',
    },
    "code": {
        "code_generate": '''async def solve(problem, ops):
    return await ops.code_generate(problem)
''',
        "generate_test": '''async def solve(problem, ops):
    code = await ops.code_generate(problem)
    return await ops.test(problem, code)
''',
    },
}
"""Named seed workflows per task type (code seeds let the operators infer the entry point)."""

DESCRIPTIONS: dict[str, str] = {
    "qa": "Answer questions about the given context; the answer is a short span (a name, a number, "
          "a phrase), scored by token F1 against the reference.",
    "math": "Solve math word problems; the output is the final answer only (a number or a LaTeX "
            "expression), compared with the reference answer.",
    "code": "Write a Python function that solves the problem; the output is the complete code that "
            "defines the function, scored by running hidden tests.",
}
"""Default task headers for prompts, per task type."""
