"""The mutation proposer: valid, deterministic, type-directed edits and failure-driven routing."""

import ast
import asyncio
import random

import pytest

from operators.validate import validate_workflow
from search.base import FailedExample, ProposalContext
from search.proposers.mutations import MutationProposer, _Program
from search.proposers.routing import cue_words, multi_arg_call, pipelines, run_pipeline
from search.proposers.signatures import load_signatures, parse_signature

OPS = ("calculate", "convert_units", "count_char", "extract_equation", "extract_expression", "extract_list",
       "extract_number", "extract_quoted", "extract_units", "majority_vote", "mean", "median",
       "reverse_text", "solve_equation", "sum_list", "upper")
SEED = """async def solve(problem, ops):
    expression = await ops.extract_expression(problem)
    return await ops.calculate(expression)
"""


def _context(**kw) -> ProposalContext:
    failures = (
        FailedExample(1, "Find the median of 3, 5, 9.", "5", "17"),
        FailedExample(2, "Find the median of 1, 2, 4.", "2", "7"),
        FailedExample(3, "Write 'abc' backwards.", "cba", None, "operator_error"),
    )
    return ProposalContext("calc", "word problems", OPS, 1, SEED, 0.2, failures=failures,
                           passes=("What is 3 + 4?", "Find the value of 2 * 3."), **kw)


def test_parse_signature():
    sig = parse_signature("solve_equation(equation: str, variable: str = 'x') -> str")
    assert sig.name == "solve_equation" and sig.returns == "str" and sig.required == 1
    assert sig.params == (("equation", "str", False), ("variable", "str", True))
    assert sig.unary_from("str") and not sig.unary_from("list")


def test_cue_words_prefer_failure_only_words():
    # 'median' is in 2 of 3 failures and no pass; 'Find' is in failures and in a pass (2/3 - 1/2 > 0)
    cues = cue_words(["Find the median of 3", "Find the median of 1", "Write 'abc' backwards"],
                     ["What is 3 + 4?", "Find the value of 2 * 3."])
    # score = share of failures containing the word - share of passes containing it:
    # median 2/3; Write, abc, backwards 1/3; Find, the 2/3 - 1/2 = 1/6; What 0 - 1/2 < 0 (dropped)
    assert cues == ["median", "Write", "abc", "backwards", "Find", "the"]


def test_pipelines_are_type_checked():
    sigs = load_signatures(OPS)
    chains = pipelines(sigs, max_len=2)
    assert ["extract_equation", "solve_equation"] in chains[1]
    assert ["extract_list", "median"] in chains[1]
    assert ["median"] not in chains[0]  # median takes a list, not the problem text


def test_multi_arg_call_fills_arguments_from_one_extractor():
    sigs = load_signatures(OPS)
    program = _Program(SEED)
    seen = {__import__("ast").unparse(multi_arg_call(program.call, lambda: __import__('ast').Name(id='problem'), sigs, "convert_units", random.Random(s)))
            for s in range(40)}
    oracle = ("await ops.convert_units(await ops.extract_number(problem), "
              "(await ops.extract_units(problem))[0], (await ops.extract_units(problem))[1])")
    assert oracle in seen


def test_proposals_are_valid_distinct_and_deterministic():
    proposer = MutationProposer()
    a = asyncio.run(proposer.propose(_context(), 8, seed=3))
    b = asyncio.run(proposer.propose(_context(), 8, seed=3))
    c = asyncio.run(proposer.propose(_context(), 8, seed=4))
    assert [x.code for x in a] == [x.code for x in b]
    assert [x.code for x in a] != [x.code for x in c]
    assert len({x.code for x in a}) == len(a) == 8
    for cand in a:
        validate_workflow(cand.code, OPS)  # raises if invalid
        assert cand.source == "mutation" and cand.meta["mutation"] and cand.description
        assert cand.code.strip() != SEED.strip()


def test_every_edit_kind_applies_and_routes_use_failure_cues():
    kinds = {}
    for seed in range(12):
        for cand in asyncio.run(MutationProposer().propose(_context(), 6, seed)):
            kinds.setdefault(cand.meta["mutation"], cand)
    # the seed has no string literal, so change_arg cannot apply to it
    assert set(kinds) == {"insert", "delete", "replace", "ensemble", "route", "guard"}
    route = kinds["route"].code
    assert "in problem:" in route and ("'median'" in route or "'backwards'" in route or "'abc'" in route)
    assert "majority_vote([" in kinds["ensemble"].code


def test_no_failures_means_no_routing():
    ctx = ProposalContext("calc", "d", OPS, 1, SEED, 1.0)
    cands = asyncio.run(MutationProposer(weights={"route": 1.0}).propose(ctx, 3, 0))
    assert cands == []


def test_change_arg_rewrites_routing_cue():
    routed = SEED.replace("    expression", "    if 'Write' in problem:\n        return problem\n    expression")
    ctx = _context()
    ctx = ProposalContext(ctx.benchmark, ctx.task_description, OPS, 1, routed, 0.2, failures=ctx.failures,
                          passes=ctx.passes)
    cands = asyncio.run(MutationProposer(weights={"change_arg": 1.0}).propose(ctx, 3, 0))
    assert len(cands) == 3
    for cand in cands:
        assert "'Write' in problem" not in cand.code
        assert any(f"'{w}' in problem" in cand.code for w in ("median", "abc", "backwards", "Find", "the"))


def test_run_pipeline_and_answer_checks():
    import ast

    import pytest

    from search.proposers.routing import exact_answer, run_pipeline
    from workflow_rl.tasks.calc import CalcBenchmark

    same_answer = CalcBenchmark().same_answer  # the benchmark's check: calc compares numbers by value

    expr = ast.parse("await ops.median(await ops.extract_list(problem))", mode="eval").body
    assert asyncio.run(run_pipeline(expr, "problem", "Find the median of 3, 9, 5.")) == "5"
    units = ast.parse("await ops.convert_units(await ops.extract_number(problem), "
                      "(await ops.extract_units(problem))[0], (await ops.extract_units(problem))[1])", mode="eval").body
    assert same_answer(asyncio.run(run_pipeline(units, "problem", "Convert 2 kg to g.")), "2000")
    assert same_answer("4.0", "4") and same_answer(" cba", "cba") and not same_answer("x", "y")
    assert exact_answer(" cba", "cba") and not exact_answer("4.0", "4")  # search's default knows no numbers
    llm = ast.parse("await ops.answer_generate(problem)", mode="eval").body
    with pytest.raises(LookupError):
        asyncio.run(run_pipeline(llm, "problem", "hi"))


def test_checked_routes_solve_their_failing_example():
    failures = (FailedExample(1, "Find the median of 3, 5, 9.", "5", "17"),)
    ctx = ProposalContext("calc", "d", OPS, 1, SEED, 0.2, failures=failures, passes=("What is 3 + 4?",))
    checked = asyncio.run(MutationProposer(weights={"route": 1.0}).propose(ctx, 3, seed=0))
    unchecked = asyncio.run(MutationProposer(weights={"route": 1.0}, route_checks=0).propose(ctx, 3, seed=0))
    assert all("(checked on a failing example)" in c.description for c in checked)
    assert all("median" in c.code for c in checked)
    assert not any("checked" in c.description for c in unchecked)


ROUTED = """async def solve(problem, ops):
    if 'median' in problem:
        return await ops.median(await ops.extract_list(problem))
    return await ops.calculate(await ops.extract_expression(problem))
"""


def _guards(code: str, failures: tuple, seeds: range = range(4), **kw) -> list:
    ctx = ProposalContext("calc", "d", OPS, 1, code, 0.2, failures=failures, passes=("What is 3 + 4?",))
    out = []
    for seed in seeds:
        out += asyncio.run(MutationProposer(weights={"guard": 1.0}, **kw).propose(ctx, 2, seed))
    return out


def test_guards_go_after_routes_and_before_the_fallback_and_solve_their_example():
    failures = (FailedExample(1, "Given 6x + 10 = 100, find the number x.", "15", "0"),)
    guards = _guards(ROUTED, failures)
    assert guards
    for cand in guards:
        body = ast.parse(cand.code).body[0].body
        # the route stays first, the guard comes next, the old fallback last
        assert [type(s).__name__ for s in body] == ["If", "Try", "Return"]
        assert "except Exception:" in cand.code and "(checked on a failing example)" in cand.description
        validate_workflow(cand.code, OPS)
        expr = body[1].body[0].value
        assert asyncio.run(run_pipeline(expr, "problem", failures[0].problem)) == "15"


def test_a_guard_that_fires_on_another_phrasing_and_falls_through_elsewhere():
    """The guard found on one phrasing of an equation solves another one and raises (falls through) on
    an arithmetic problem, which a keyword route on the first phrasing's words would not do."""
    failures = (FailedExample(1, "Find x when 7x - 13 = -90.", "-11", "0"),)
    exprs = [ast.parse(c.code).body[0].body[1].body[0].value for c in _guards(ROUTED, failures)]
    assert exprs
    for expr in exprs:
        assert asyncio.run(run_pipeline(expr, "problem", "What value of x makes 9x = -63 true?")) == "-7"
        with pytest.raises(Exception):  # noqa: B017 - any operator failure is a fall-through
            asyncio.run(run_pipeline(expr, "problem", "What is 3 + 4?"))


def test_no_guard_without_a_checked_pipeline():
    failures = (FailedExample(1, "Find the median of 3, 5, 9.", "5", "17"),)
    assert _guards(ROUTED, failures, route_checks=0) == []  # unchecked pipelines never make a guard
    impossible = (FailedExample(1, "Find the median of 3, 5, 9.", "not an answer", "17"),)
    assert _guards(ROUTED, impossible) == []
