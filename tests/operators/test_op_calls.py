"""The one matcher for operator calls (operators/op_calls.py) shared by graph, mutations and grafts."""

import ast

from operators.op_calls import awaited_op_calls, awaited_op_name, op_call_name

CODE = """async def solve(problem, tools):
    x = await tools.extract_list(problem)
    y = tools.median(x)
    z = await ops.upper(problem)
    return await tools.calculate(await tools.extract_expression(problem))
"""


def test_awaited_calls_in_breadth_first_order_on_the_given_ops_name():
    found = [name for _, name in awaited_op_calls(ast.parse(CODE), "tools")]
    # ast.walk order (callers draw from it with a seeded RNG); the bare call and ops.upper do not count
    assert found == ["extract_list", "calculate", "extract_expression"]
    assert [n for _, n in awaited_op_calls(ast.parse(CODE))] == ["upper"]


def test_single_node_matchers():
    call = ast.parse("tools.median(x)", mode="eval").body
    awaited = ast.parse("await tools.median(x)", mode="eval").body
    assert op_call_name(call, "tools") == "median" and op_call_name(call) is None
    assert awaited_op_name(awaited, "tools") == "median" and awaited_op_name(call, "tools") is None
    assert op_call_name(ast.parse("a.b.median(x)", mode="eval").body, "b") is None  # only the bare name
    assert awaited_op_name(None) is None
