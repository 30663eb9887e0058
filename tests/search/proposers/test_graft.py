"""Grafting a per-problem program into a parent as a verified routing branch (search/proposers/graft.py)."""

from __future__ import annotations

import asyncio

from operators.validate import validate_workflow
from search.base import FailedExample
from search.proposers.graft import (
    best_cue,
    graft,
    run_straight_line,
    solved_map,
    solves_example,
    straight_line,
)
from tests.helpers.programs import MEDIAN, PARENT

FAIL = FailedExample(1, "Find the median of [4, 9, 1].", "4", "14")
OPS = ("calculate", "extract_expression", "extract_list", "median", "mean", "extract_quoted", "upper")


def test_straight_line_accepts_assignments_then_return_only():
    body, problem = straight_line(MEDIAN)
    assert (len(body), problem) == (2, "problem")
    branching = "async def solve(problem, ops):\n    if 'x' in problem:\n        return 1\n    return 2\n"
    assert straight_line(branching) is None
    assert straight_line("async def solve(problem, ops):\n    x = 1\n") is None  # no final return
    assert straight_line("def broken(:") is None


def test_run_straight_line_uses_variables_and_tool_operators():
    body, problem = straight_line(MEDIAN)
    assert asyncio.run(run_straight_line(body, problem, FAIL.problem)) in ("4", 4)
    assert asyncio.run(solves_example(body, problem, FAIL))
    mean_body, p = straight_line(MEDIAN.replace("median", "mean"))
    assert not asyncio.run(solves_example(mean_body, p, FAIL))  # mean is 14/3, not the expected 4
    quoted, p = straight_line("async def solve(problem, ops):\n    t = await ops.extract_quoted(problem)\n"
                                 "    return await ops.upper(t)\n")
    assert not asyncio.run(solves_example(quoted, p, FAIL))  # no quoted text: an error is "not solved"


def test_graft_routes_the_cue_first_after_the_docstring():
    body, _ = straight_line(MEDIAN)
    upper, _ = straight_line("async def solve(problem, ops):\n    return await ops.upper(problem)\n")
    code = graft(PARENT, [("median", body), ("capital", upper)])
    validate_workflow(code, OPS)
    lines = [line.strip() for line in code.splitlines()]
    assert lines[2] == "if 'median' in problem:" and lines[5] == "if 'capital' in problem:"

    async def run(text):
        namespace: dict = {}
        exec(code, namespace)  # trusted test code

        class Tools:  # the two operators the routed paths call, as plain functions
            async def extract_list(self, t):
                return [4, 9, 1]

            async def median(self, values):
                return sorted(values)[1]

            async def extract_expression(self, t):
                return "2 + 3"

            async def calculate(self, e):
                return 5

        return await namespace["solve"](text, Tools())

    assert graft("x = 1", [("median", body)]) is None  # no solve to graft into

    assert asyncio.run(run("the median of [4, 9, 1]")) == 4
    assert asyncio.run(run("What is 2 + 3?")) == 5  # the parent's own path is unchanged


def test_best_cue_routes_what_the_program_solves_and_nothing_it_breaks():
    body, problem = straight_line(MEDIAN)
    failures = [FAIL,
                FailedExample(2, "Find the median of 3, 5 and 8.", "5", "16"),
                FailedExample(3, "Find the mean of [2, 4, 9].", "5", "15")]
    passes = ["Find the value of 2 + 3."]
    # 'Find', 'the', 'of' are in the mean failure (not solved) and a pass: 'median' scores +2
    assert asyncio.run(best_cue(body, problem, FAIL, failures, passes, set())) == "median"
    assert asyncio.run(best_cue(body, problem, FAIL, failures, passes, {"median"})) is None
    # without the mean failure and the pass, 'Find', 'the' and 'median' tie at +2: the word that
    # names what the program's operators do wins, not the earliest
    assert asyncio.run(best_cue(body, problem, FAIL, failures[:2], [], set())) == "median"
    # no word names an operator: the earliest of the best
    assert asyncio.run(best_cue(body, problem, FAIL, failures[:2], [], {"median"})) == "Find"
    # a caller's solved map is used as given, not run again: told that the program also solves
    # the mean failure, 'Find' scores +3 - 1 (the pass) instead of 0 and becomes the cue
    solved = asyncio.run(solved_map(body, problem, failures))
    assert solved == {1: True, 2: True, 3: False}
    assert asyncio.run(best_cue(body, problem, FAIL, failures, passes, set(), solved)) == "median"
    assert asyncio.run(best_cue(body, problem, FAIL, failures, passes, {"median"}, {**solved, 3: True})) == "Find"


def test_best_cue_never_picks_a_quoted_word():
    body, problem = straight_line("async def solve(problem, ops):\n    text = await ops.extract_quoted(problem)\n"
                                  "    return await ops.upper(text)\n")
    target = FailedExample(4, "Make 'kodu' shout.", "KODU", "0")
    assert asyncio.run(solves_example(body, problem, target))
    # 'kodu' is the data this problem works on; no other problem will contain it
    assert asyncio.run(best_cue(body, problem, target, [target], [], set())) == "Make"
    assert asyncio.run(best_cue(body, problem, target, [target], [], {"Make", "shout"})) is None
