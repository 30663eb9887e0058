"""Graph view and structural hash of workflow programs."""

from __future__ import annotations

import networkx as nx
import pytest

from operators.graph import INPUT, OUTPUT, graph_hash, workflow_graph
from workflow_rl.tasks import get_benchmark

BASE = '''async def solve(problem, ops):
    expr = await ops.extract_expression(problem)
    if "x" in expr:
        answer = await ops.solve_equation(expr)
    else:
        answer = await ops.calculate(expr)
    return answer
'''

# Renamed variables, whitespace, comments, a docstring and a literal moved into a constant.
SAME = '''"""Same structure, different surface."""
KEY = "x"


async def solve(problem, ops):
    # find the expression
    e   = await ops.extract_expression( problem )
    if KEY in e:
        out = await ops.solve_equation(e)
    else:
        out = await ops.calculate(e)   # plain arithmetic
    return out
'''


def _labels(graph):
    return sorted(data["label"].split("(")[0].split("[")[0] for _, data in graph.nodes(data=True))


def test_graph_nodes_and_edges():
    g = workflow_graph(BASE)
    assert _labels(g) == ["calculate", "else", "extract_expression", "if", INPUT, OUTPUT, "solve_equation"]
    by_op = {data["label"].split("(")[0].split("[")[0]: n for n, data in g.nodes(data=True)}
    ext, branch, other = by_op["extract_expression"], by_op["if"], by_op["else"]
    expected = {
        (INPUT, ext),
        (ext, branch),  # the condition reads expr
        (branch, other),  # the else arm hangs off the header
        (ext, by_op["solve_equation"]), (branch, by_op["solve_equation"]),
        (ext, by_op["calculate"]), (other, by_op["calculate"]),
        (by_op["solve_equation"], OUTPUT), (by_op["calculate"], OUTPUT), (branch, OUTPUT), (other, OUTPUT),
    }
    assert set(g.edges()) == expected


def test_loop_carried_and_container_dependencies():
    code = '''async def solve(problem, ops):
    votes = []
    draft = problem
    for i in range(3):
        draft = await ops.revise(draft)
        votes.append(draft)
    return await ops.majority_vote(votes)
'''
    g = workflow_graph(code)
    node = {data["label"].split("(")[0].split("[")[0]: n for n, data in g.nodes(data=True)}
    assert g.has_edge(node["revise"], node["revise"])  # draft feeds the next iteration
    assert nx.has_path(g, node["revise"], node["majority_vote"])  # through votes.append
    assert g.has_edge(INPUT, node["revise"])
    assert not g.has_edge(INPUT, node["majority_vote"])
    assert g.has_edge(node["majority_vote"], OUTPUT)


def test_comprehension_calls_depend_on_the_iterable():
    code = '''async def solve(problem, ops):
    parts = await ops.split(problem)
    answers = [await ops.calculate(p) for p in parts]
    return await ops.vote(answers)
'''
    g = workflow_graph(code)
    node = {data["label"].split("(")[0]: n for n, data in g.nodes(data=True)}
    assert g.has_edge(node["split"], node["calculate"])
    assert nx.has_path(g, node["calculate"], node["vote"])  # through the list-building node


def test_hash_invariant_to_names_and_formatting():
    assert graph_hash(BASE) == graph_hash(SAME)


@pytest.mark.parametrize(
    "variant",
    [
        BASE.replace("ops.calculate", "ops.mean"),  # changed operator
        BASE.replace("ops.calculate(expr)", "ops.calculate(problem)"),  # changed edge
        BASE.replace('"x" in expr', '"y" in expr'),  # changed branch condition
        BASE.replace("    return answer", "    return expr"),  # output from another node
        BASE.replace("ops.extract_expression(problem)", "ops.extract_expression(problem, 'Find it:')"),
        BASE.replace("    return answer", "    return answer.strip()"),  # plain Python on the output
        BASE.replace("expr = await ops.extract_expression(problem)",
                     "expr = await ops.extract_expression(problem)\n    expr = expr.lower()"),
        BASE.replace("ops.extract_expression(problem)", "ops.extract_expression(problem[:100])"),
        BASE.replace("ops.solve_equation(expr)", "ops.TMP(expr)").replace("ops.calculate(expr)", "ops.solve_equation(expr)")
        .replace("ops.TMP(expr)", "ops.calculate(expr)"),  # swapped if/else arms
    ],
    ids=["operator", "edge", "condition", "output", "prompt", "return-transform", "assign-transform", "arg-slice",
         "swapped-arms"],
)
def test_hash_changes_with_structure(variant):
    assert graph_hash(variant) != graph_hash(BASE)


def test_prompt_literal_is_part_of_the_label():
    a = 'async def solve(problem, ops):\n    return await ops.custom(problem, "Think step by step.")\n'
    b = a.replace("Think step by step.", "Answer with one word.")
    assert graph_hash(a) != graph_hash(b)
    assert graph_hash(a) == graph_hash(a.replace("problem", "question").replace("(question, ops)", "(question, ops)"))


def test_exception_handlers_are_structure():
    a = _TRY.format(caught="ValueError", fallback="'none'")
    assert graph_hash(a) == graph_hash(a.replace("answer", "result"))
    assert graph_hash(a) != graph_hash(_TRY.format(caught="KeyError", fallback="'none'"))
    assert graph_hash(a) != graph_hash(_TRY.format(caught="ValueError", fallback="'zero'"))


_TRY = """async def solve(problem, ops):
    try:
        answer = await ops.calculate(problem)
    except {caught}:
        answer = {fallback}
    return answer
"""


def test_calc_workflows_hash_distinctly():
    bench = get_benchmark("calc")
    programs = [*bench.seed_workflows().values(), *bench.oracle_workflows().values(), bench.routed_workflow()]
    hashes = {graph_hash(code) for code in programs}
    assert len(hashes) == len(set(programs))


def test_missing_solve_or_bad_syntax_raise_value_error():
    with pytest.raises(ValueError, match="no `solve`"):
        workflow_graph("x = 1\n")
    with pytest.raises(ValueError, match="cannot parse"):
        graph_hash("async def solve(:\n")
