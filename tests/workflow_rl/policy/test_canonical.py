"""Search workflows as training data: branch programs and the canonical form (workflow_rl/policy/canonical.py)."""

from __future__ import annotations

import asyncio

from operators.validate import validate_workflow
from search.proposers.graft import run_straight_line, straight_line
from tests.helpers.programs import MEDIAN, PARENT
from workflow_rl.policy.canonical import branch_programs, canonical, flatten

ROUTED = """async def solve(problem, ops):
    \"\"\"Routed.\"\"\"
    if 'median' in problem:
        values = await ops.extract_list(problem)
        return await ops.median(values)
    if 'shout' in problem:
        return await ops.upper(await ops.extract_quoted(problem))
    else:
        return 'x'
    expression = await ops.extract_expression(problem)
    return await ops.calculate(expression)
"""


def test_branch_programs_are_the_straight_line_parts_of_a_routed_workflow():
    header = "async def solve(problem, ops):\n"
    assert branch_programs(ROUTED) == [
        header + "    values = await ops.extract_list(problem)\n    return await ops.median(values)\n",
        header + "    return await ops.upper(await ops.extract_quoted(problem))\n",
        header + "    return 'x'\n",
        header + "    expression = await ops.extract_expression(problem)\n    return await ops.calculate(expression)\n",
    ]
    assert branch_programs(PARENT) == [header + PARENT.split('"""\n', 1)[1]]  # docstring dropped
    looped = "async def solve(problem, ops):\n    for _ in range(2):\n        pass\n    return problem\n"
    assert branch_programs(looped) == [] and branch_programs("def (") == []
    # a branch that does not end in a return (falls through to the tail) is not a program
    nested = "async def solve(problem, ops):\n    if 'a' in problem:\n        x = 1\n    return problem\n"
    assert branch_programs(nested) == [header + "    return problem\n"]


RETURNS = {"extract_expression": "str", "calculate": "str", "count_char": "int", "extract_equation": "str", "solve_equation": "str", "extract_quoted": "str", "upper": "str",
           "extract_number": "number", "convert_units": "str", "extract_list": "list", "median": "str"}


def test_flatten_hoists_nested_operator_calls_into_typed_variables():
    chain = "async def solve(problem, ops):\n    return await ops.upper(await ops.extract_quoted(await ops.extract_equation(problem)))\n"
    assert flatten(chain, RETURNS) == (
        "async def solve(problem, ops):\n    text = await ops.extract_equation(problem)\n"
        "    text = await ops.extract_quoted(text)\n    return await ops.upper(text)\n")
    # two live arguments of one type: the second keeps its nested call (one name cannot hold both)
    multi = ("async def solve(problem, ops):\n    return await ops.convert_units(await ops.extract_number(problem), "
             "await ops.extract_quoted(problem, 0), await ops.extract_quoted(problem, 1))\n")
    flat = flatten(multi, RETURNS)
    assert flat == ("async def solve(problem, ops):\n    value = await ops.extract_number(problem)\n"
                    "    text = await ops.extract_quoted(problem, 0)\n"
                    "    return await ops.convert_units(value, text, await ops.extract_quoted(problem, 1))\n")
    # a name the program already uses is never reused; flat code is left as it is
    taken = "async def solve(problem, ops):\n    text = 'hi'\n    return await ops.upper(await ops.extract_quoted(problem))\n"
    assert flatten(taken, RETURNS) == taken
    assert flatten(MEDIAN, RETURNS) == MEDIAN


def test_flattened_programs_give_the_same_answers():
    problem = 'Solve for x: 2*x + 3 = 11. Then shout "hello".'
    for code in (
        "async def solve(problem, ops):\n    return await ops.solve_equation(await ops.extract_equation(problem))\n",
        "async def solve(problem, ops):\n    return await ops.upper(await ops.extract_quoted(problem))\n",
    ):
        flat = flatten(code, RETURNS)
        assert flat != code
        validate_workflow(flat, tuple(RETURNS))
        before, after = straight_line(code), straight_line(flat)
        assert asyncio.run(run_straight_line(before[0], "problem", problem)) == \
            asyncio.run(run_straight_line(after[0], "problem", problem))


def test_canonical_renames_operator_results_to_their_types_name():
    header = "async def solve(problem, ops):\n"
    seed = header + "    expression = await ops.extract_expression(problem)\n    return await ops.calculate(expression)\n"
    assert canonical(seed, RETURNS) == header + "    text = await ops.extract_expression(problem)\n    return await ops.calculate(text)\n"
    # `a` is still read when `b` is bound: b keeps its name (one variable cannot hold both)
    two = header + ("    a = await ops.extract_expression(problem)\n    b = await ops.extract_quoted(problem)\n"
                    "    return await ops.count_char(a, b)\n")
    assert canonical(two, RETURNS) == header + (
        "    text = await ops.extract_expression(problem)\n    b = await ops.extract_quoted(problem)\n"
        "    return await ops.count_char(text, b)\n")
    # a value that is dead once read can hand its name on
    chain = header + ("    a = await ops.extract_equation(problem)\n    b = await ops.extract_quoted(a)\n"
                      "    return await ops.upper(b)\n")
    assert canonical(chain, RETURNS) == header + (
        "    text = await ops.extract_equation(problem)\n    text = await ops.extract_quoted(text)\n"
        "    return await ops.upper(text)\n")
    # the program's own `text` is never clobbered; non-operator values keep their names
    own = header + "    text = 'hi'\n    expression = await ops.extract_expression(problem)\n    return text + expression\n"
    assert canonical(own, RETURNS) == own
