"""The built-in calc benchmark: determinism, disjoint splits, held-out phrasings, exact scoring,
documented seed/routed scores and the per-recipe oracle proving every problem solvable."""

from __future__ import annotations

import asyncio
import re
import statistics
from fractions import Fraction

import pytest
import sympy
from sqlalchemy import func, select

from operators.base import OpContext
from operators.registry import get_operators
from operators.validate import validate_workflow
from storage.engine import open_db, session_scope
from storage.models import Problem
from workflow_rl.errors import WorkflowRLError
from workflow_rl.tasks import get_benchmark, persist_problems
from workflow_rl.tasks.calc import CalcBenchmark, score_answer
from workflow_rl.tasks.calc_gen import FAMILIES, PHRASINGS, RECIPES, split_of

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def bench() -> CalcBenchmark:
    return get_benchmark("calc")


@pytest.fixture(scope="module")
def run_workflow(bench):
    """``run(code, problems) -> rewards``: executes through the real Sandbox (one pool per module).

    Every failure (operator error, crash) is a typed result with no output, scored 0.
    """
    from operators.runtime import Sandbox

    loop = asyncio.new_event_loop()
    sandbox = Sandbox(get_operators(bench.operator_names), workers=2)

    def run(code: str, problems) -> list[float]:
        validate_workflow(code, bench.operator_names)

        async def score_all() -> list[float]:
            results = await sandbox.run_many((code, p.text) for p in problems)
            for result in results:
                assert result.ok or result.error_kind in ("operator_error", "crash"), result
            scores = [
                await bench.score(p, r.output, OpContext()) for p, r in zip(problems, results, strict=True)
            ]
            return [s.reward for s in scores]

        return loop.run_until_complete(score_all())

    yield run
    sandbox.close()
    loop.close()


# ------------------------------------------------------------------ generation


def test_generation_is_deterministic_per_seed_and_prefix_stable(bench):
    again = CalcBenchmark()
    for split in SPLITS:
        assert [(p.key, p.text, p.reference) for p in again.problems(split)] == [
            (p.key, p.text, p.reference) for p in bench.problems(split)
        ]
    small = CalcBenchmark(train_size=7)
    assert small.problems("train") == bench.problems("train")[:7]
    other = CalcBenchmark(seed=1)
    assert other.name == "calc-s1" and bench.name == "calc"
    assert [p.text for p in other.problems("validation")] != [p.text for p in bench.problems("validation")]


def test_sizes_families_and_recipes(bench):
    assert [len(bench.problems(s)) for s in SPLITS] == [200, 60, 100]
    for split in SPLITS:
        problems = bench.problems(split)
        counts = {f: sum(p.meta["family"] == f for p in problems) for f in FAMILIES}
        assert set(counts.values()) == {len(problems) // 5}, counts
        recipes = {p.meta["recipe"] for p in problems}
        assert recipes == {r for rs in RECIPES.values() for r in rs}
        assert len({p.key for p in problems}) == len(problems)
        assert max(len(p.text) for p in problems) < 100  # short enough for tiny models


def test_splits_are_disjoint_in_numbers_and_text(bench):
    keys = {s: {p.meta["operand_key"] for p in bench.problems(s)} for s in SPLITS}
    texts = {s: {p.text for p in bench.problems(s)} for s in SPLITS}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not keys[a] & keys[b]
        assert not texts[a] & texts[b]
    for split in SPLITS:
        assert all(split_of(k) == split for k in keys[split])


def _template_regex(template: str) -> re.Pattern:
    return re.compile(re.sub(r"\\\{\w+\\\}", ".+?", re.escape(template)) + "$")


def test_test_split_uses_only_held_out_phrasings(bench):
    for recipe_key, (train_templates, test_templates) in PHRASINGS.items():
        assert not set(train_templates) & set(test_templates), recipe_key
    for split in SPLITS:
        for p in bench.problems(split):
            key = "stats" if p.meta["recipe"].startswith("stats_") else p.meta["recipe"]
            train_templates, test_templates = PHRASINGS[key]
            own = test_templates if split == "test" else train_templates
            assert _template_regex(own[p.meta["phrasing"]]).match(p.text), p.text
            assert p.meta["held_out"] is (split == "test")


_UNIT_SIZE = {"mm": Fraction(1, 1000), "cm": Fraction(1, 100), "m": 1, "km": 1000, "mg": Fraction(1, 1000)}
_UNIT_SIZE.update({"g": 1, "kg": 1000, "ml": Fraction(1, 1000), "l": 1, "s": 1, "min": 60, "h": 3600})


def _independent_answer(p) -> str | Fraction:
    """The answer recomputed without the project's tools (sympy, statistics, str methods)."""
    recipe, text, key = p.meta["recipe"], p.text, p.meta["operand_key"]
    if recipe == "arith":
        body = (
            text.replace("plus", "+").replace("minus", "-").replace("times", "*").replace("divided by", "/")
        )
        body = re.sub(r"[^\d+\-*/() ]", "", body)
        value = sympy.sympify(body.strip(), rational=True)
        return Fraction(int(value.p), int(value.q))
    if recipe == "linear":
        equation = re.search(r"(-?\d+x.*?= -?\d+(?:x [-+] \d+)?)", text).group(1)
        left, right = (sympy.sympify(re.sub(r"(\d)x", r"\1*x", s)) for s in equation.split("="))
        (root,) = sympy.solve(left - right, sympy.Symbol("x"))
        return Fraction(int(root))
    if recipe.startswith("stats_"):
        values = [Fraction(int(v)) for v in key.split(":")[1].split(",")]
        fn = {"mean": statistics.mean, "median": statistics.median, "max": max, "min": min, "sum": sum}
        return Fraction(fn[recipe.split("_")[1]](values))
    if recipe.startswith("str_"):
        word = re.findall(r"'([a-z]+)'", text)[-1]
        if recipe == "str_count":
            return Fraction(word.count(re.findall(r"'([a-z])'", text)[0]))
        return word[::-1] if recipe == "str_reverse" else word.upper()
    value, src, dst = key.split(":")[1].split(",")
    return Fraction(value) * Fraction(_UNIT_SIZE[src]) / Fraction(_UNIT_SIZE[dst])


def test_references_match_an_independent_computation(bench):
    for split in SPLITS:
        for p in bench.problems(split)[:40]:
            expected = _independent_answer(p)
            if isinstance(expected, str):
                assert p.reference == expected, p.text
            else:
                assert Fraction(p.reference) == expected, (p.text, p.reference)


# ------------------------------------------------------------------ scoring


@pytest.mark.parametrize(
    ("output", "reference", "answer_type", "reward"),
    [
        ("4", "4", "number", 1.0),
        ("4.0", "4", "number", 1.0),
        ("8/2", "4", "number", 1.0),
        (" 2.5\n", "5/2", "number", 1.0),
        ("4.01", "4", "number", 0.0),
        ("4 km", "4", "number", 0.0),
        (None, "4", "number", 0.0),
        (" otitud ", "otitud", "text", 1.0),
        ("OTITUD", "otitud", "text", 0.0),
        ("3", "3.0", "text", 0.0),
    ],
)
def test_score_answer(output, reference, answer_type, reward):
    score = score_answer(output, reference, answer_type)
    assert score.reward == reward
    assert score.answer == (None if output is None else output.strip())


def test_benchmark_score_uses_answer_type(bench):
    problem = next(p for p in bench.problems("validation") if p.meta["recipe"] == "stats_mean")
    assert problem.reference == "191/6"
    assert asyncio.run(bench.score(problem, "191/6", OpContext())).reward == 1.0
    assert asyncio.run(bench.score(problem, "31.8333", OpContext())).reward == 0.0


# ------------------------------------------------------------------ workflows and documented scores

# Exact reward counts behind the table in workflow_rl/tasks/calc.py's docstring.
DOCUMENTED = {
    "calculate": {"train": 45, "validation": 14, "test": 23},
    "sum_numbers": {"train": 9, "validation": 2, "test": 2},
    "routed": {"train": 200, "validation": 60, "test": 52},
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_documented_scores(bench, run_workflow, name):
    code = bench.routed_workflow() if name == "routed" else bench.seed_workflows()[name]
    for split in SPLITS:
        assert sum(run_workflow(code, bench.problems(split))) == DOCUMENTED[name][split], split


def test_no_single_recipe_workflow_solves_much_beyond_its_family(bench, run_workflow):
    validation = bench.problems("validation")
    for recipe, code in bench.oracle_workflows().items():
        # A family is 1/5 of the split; coincidences (e.g. "maximum of 1, 32, 16" -> "32") add a little.
        assert sum(run_workflow(code, validation)) / len(validation) <= 0.25, recipe


def test_oracle_set_scores_one_on_every_split(bench, run_workflow):
    for split in SPLITS:
        for recipe, code in bench.oracle_workflows().items():
            problems = [p for p in bench.problems(split) if p.meta["recipe"] == recipe]
            assert run_workflow(code, problems) == [1.0] * len(problems), (split, recipe)
    assert bench.oracle_for(bench.problems("test")[0]) == bench.oracle_workflows()["arith"]


# ------------------------------------------------------------------ registry and persistence


def test_get_benchmark_errors():
    with pytest.raises(WorkflowRLError, match="unknown benchmark 'nope'; known: .*calc"):
        get_benchmark("nope")
    with pytest.raises(WorkflowRLError, match="bad options for benchmark 'calc'"):
        get_benchmark("calc", colour="red")
    with pytest.raises(WorkflowRLError, match="test_size must be an int"):
        get_benchmark("calc", test_size=-1)
    with pytest.raises(WorkflowRLError, match="unknown split 'dev'"):
        get_benchmark("calc").problems("dev")


def test_persist_problems_is_idempotent(sqlite_url):
    small = get_benchmark("calc", train_size=10, validation_size=5, test_size=5)
    engine = open_db(sqlite_url)
    with session_scope(engine) as session:
        first = persist_problems(session, small)
    with session_scope(engine) as session:
        second = persist_problems(session, small)
        count = session.scalar(select(func.count()).select_from(Problem))
        row = session.get(Problem, first[("validation", "validation-00002")])
        stored = (row.benchmark, row.split, row.text, row.reference, row.meta["recipe"])
    assert first == second and len(first) == 20 and count == 20
    problem = small.problems("validation")[2]
    assert stored == ("calc", "validation", problem.text, problem.reference, problem.meta["recipe"])
    engine.dispose()
