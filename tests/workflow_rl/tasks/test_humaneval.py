"""HumanEval through the project's sandbox: 164/164 canonical solutions pass, 0/164 mutants do."""

from __future__ import annotations

import asyncio

import pytest

from operators.base import OpContext
from operators.registry import get_operators
from operators.runtime import Limits, Sandbox
from operators.validate import validate_workflow
from workflow_rl.tasks import get_benchmark
from workflow_rl.tasks.humaneval import HumanEvalBenchmark

# Wraps the entry point so that every result is perturbed: a wrong-answer bug in each solution.
MUTATION = """

_original_{entry} = {entry}


def _perturb(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "#"
    if isinstance(value, list):
        return value + [None]
    if isinstance(value, tuple):
        return value + (None,)
    return 0 if value is None else None


def {entry}(*args, **kwargs):
    return _perturb(_original_{entry}(*args, **kwargs))
"""


def all_problems(bench):
    return {p.key: p for s in ("train", "validation", "test") for p in bench.problems(s)}


def test_all_canonical_pass_and_all_mutants_fail(capsys):
    bench = HumanEvalBenchmark()
    problems = all_problems(bench)
    tasks = bench.all_tasks()
    assert len(problems) == 164 == len(tasks)

    async def run_all():
        async with Sandbox(get_operators([]), workers=4, limits=Limits(wall_s=30.0, memory_mb=1024)) as box:
            ctx = OpContext(run_code=box.run_code)

            async def one(task_id, mutate):
                task = tasks[task_id]
                code = task["prompt"] + task["canonical_solution"]
                if mutate:
                    code += MUTATION.format(entry=task["entry_point"])
                return (await bench.score(problems[task_id], code, ctx)).reward

            good = await asyncio.gather(*(one(t, False) for t in tasks))
            bad = await asyncio.gather(*(one(t, True) for t in tasks))
            return good, bad

    good, bad = asyncio.run(run_all())
    print(
        f"canonical solutions passing: {int(sum(good))}/164; mutated solutions passing: {int(sum(bad))}/164"
    )
    assert sum(good) == 164, [t for t, r in zip(tasks, good, strict=True) if r != 1.0]
    assert sum(bad) == 0, [t for t, r in zip(tasks, bad, strict=True) if r != 0.0]


def test_completion_style_output_and_empty_output():
    bench = HumanEvalBenchmark()
    problem = next(p for p in all_problems(bench).values() if p.key == "HumanEval/2")
    task = bench.all_tasks()["HumanEval/2"]

    async def run():
        async with Sandbox(get_operators([]), workers=1) as box:
            ctx = OpContext(run_code=box.run_code)
            body_only = await bench.score(problem, task["canonical_solution"], ctx)  # classic completion
            empty = await bench.score(problem, "", ctx)
            return body_only.reward, empty.reward

    assert asyncio.run(run()) == (1.0, 0.0)
    assert problem.meta["entry_point"] == "truncate_number"
    assert "assert (truncate_number(" in problem.meta["public_tests"]


def test_registry_splits_and_seeds():
    bench = get_benchmark("humaneval")
    sizes = [len(bench.problems(s)) for s in ("train", "validation", "test")]
    assert sum(sizes) == 164 and min(sizes) > 20
    assert [p.key for p in bench.problems("test")] == [
        p.key for p in get_benchmark("humaneval").problems("test")
    ]
    ops = get_operators(bench.operator_names)
    for code in bench.seed_workflows().values():
        validate_workflow(code, ops)
    with pytest.raises(Exception, match="unknown split"):
        bench.problems("dev")
