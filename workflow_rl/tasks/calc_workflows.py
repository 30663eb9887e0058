"""Hand-written workflow programs for the ``calc`` benchmark: seeds, per-recipe oracles, and the
best single routed workflow written by hand from train/validation phrasings.

Measured scores are in :mod:`workflow_rl.tasks.calc` (module docstring) and docs/tasks.md.
"""

from __future__ import annotations

SEED_WORKFLOWS: dict[str, str] = {
    # The AFlow-style round-0 starting point: one straight-line pipeline that only fits arithmetic.
    "calculate": """async def solve(problem, ops):
    expression = await ops.extract_expression(problem)
    return await ops.calculate(expression)
""",
    # A second, weaker straight line: adds up every number in the text (fits "sum" statistics only).
    "sum_numbers": """async def solve(problem, ops):
    numbers = await ops.extract_numbers(problem)
    return await ops.sum_list(numbers)
""",
}
"""Named seed workflows (weak on purpose)."""


def _stat_oracle(op: str) -> str:
    return f"""async def solve(problem, ops):
    values = await ops.extract_list(problem)
    return await ops.{op}(values)
"""


def _quoted_oracle(op: str) -> str:
    return f"""async def solve(problem, ops):
    text = await ops.extract_quoted(problem)
    return await ops.{op}(text)
"""


def _units_oracle(src: int, dst: int) -> str:
    return f"""async def solve(problem, ops):
    value = await ops.extract_number(problem)
    units = await ops.extract_units(problem)
    return await ops.convert_units(value, units[{src}], units[{dst}])
"""


ORACLE_WORKFLOWS: dict[str, str] = {
    "arith": SEED_WORKFLOWS["calculate"],
    "linear": """async def solve(problem, ops):
    equation = await ops.extract_equation(problem)
    return await ops.solve_equation(equation)
""",
    "stats_mean": _stat_oracle("mean"),
    "stats_median": _stat_oracle("median"),
    "stats_max": _stat_oracle("max_list"),
    "stats_min": _stat_oracle("min_list"),
    "stats_sum": _stat_oracle("sum_list"),
    "str_reverse": _quoted_oracle("reverse_text"),
    "str_upper": _quoted_oracle("upper"),
    "str_count": """async def solve(problem, ops):
    char = await ops.extract_quoted(problem, 0)
    word = await ops.extract_quoted(problem, 1)
    return await ops.count_char(word, char)
""",
    "units": _units_oracle(0, 1),
    "units_rev": _units_oracle(1, 0),
}
"""One straight-line workflow per recipe; run on each problem's own recipe it scores 1.0."""

ROUTED_WORKFLOW = """async def solve(problem, ops):
    # Keyword routing written from the train/validation phrasings only.
    if "'" in problem:
        word = await ops.extract_quoted(problem, -1)
        if "How many" in problem or "Count" in problem:
            char = await ops.extract_quoted(problem, 0)
            return await ops.count_char(word, char)
        if "everse" in problem or "backwards" in problem:
            return await ops.reverse_text(word)
        return await ops.upper(word)
    if "=" in problem:
        equation = await ops.extract_equation(problem)
        return await ops.solve_equation(equation)
    units = await ops.extract_units(problem)
    if units:
        value = await ops.extract_number(problem)
        if "How many" in problem:
            return await ops.convert_units(value, units[1], units[0])
        return await ops.convert_units(value, units[0], units[1])
    if "mean" in problem or "average" in problem:
        return await ops.mean(await ops.extract_list(problem))
    if "median" in problem:
        return await ops.median(await ops.extract_list(problem))
    if "largest" in problem or "maximum" in problem:
        return await ops.max_list(await ops.extract_list(problem))
    if "smallest" in problem or "minimum" in problem:
        return await ops.min_list(await ops.extract_list(problem))
    if "sum" in problem or "total" in problem:
        return await ops.sum_list(await ops.extract_list(problem))
    expression = await ops.extract_expression(problem)
    return await ops.calculate(expression)
"""
"""The best single task-level workflow written by hand (1.0 on train/validation, < 1.0 on test)."""
