"""The SQL examples of the docs run as written; those of docs/storage.md give the hand-computed answers
on the example DB."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from storage.sql import execute_sql

ROOT = Path(__file__).resolve().parents[2]
STORAGE = ROOT / "docs" / "storage.md"
OTHER_PAGES = sorted({ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").rglob("*.md")} - {STORAGE})


def _sections() -> tuple[str, str]:
    """(docs/storage.md, where the examples are, the other pages of the docs)."""
    return (STORAGE.read_text(encoding="utf-8"),
            "\n".join(page.read_text(encoding="utf-8") for page in OTHER_PAGES))


def _sql_blocks(text: str) -> list[str]:
    return re.findall(r"```sql\n(.*?)```", text, flags=re.S)


def readme_queries() -> list[str]:
    """The ```sql examples of docs/storage.md, in order."""
    return _sql_blocks(_sections()[0])


def test_readme_has_four_to_six_examples():
    assert 4 <= len(readme_queries()) <= 6


def _dialect_blocks(text: str, dialect: str) -> list[str]:
    """Blocks fenced as ```sqlite or ```postgresql: examples that only run on that backend."""
    return re.findall(rf"```{dialect}\n(.*?)```", text, flags=re.S)


def test_other_readme_sql_runs_as_written(demo):
    """SQL shown in the other pages of the docs must at least execute on a real database.

    Portable examples are fenced ```sql; backend-specific ones (JSON access differs) are fenced
    ```sqlite / ```postgresql and run only on their backend.
    """
    engine, _ = demo
    rest = _sections()[1]
    queries = _sql_blocks(rest) + _dialect_blocks(rest, engine.dialect.name)
    assert queries
    for query in queries:
        execute_sql(engine, query)


def test_readme_queries_answer_the_example(demo):
    engine, ids = demo
    best, unsolved, by_round, cost, lineage, errors = (execute_sql(engine, q) for q in readme_queries())
    assert [r[0] for r in best.rows] == [ids["w2"], ids["w1"], ids["w3"]]
    assert best.rows[0][4] == pytest.approx(2 / 3)  # mean_reward
    assert [r[:4] for r in unsolved.rows] == [("calc", "validation", "v3", 2)]
    assert [(r[1], r[2]) for r in by_round.rows] == [(0, 1), (1, 2)]  # (search round, workflows)
    assert [r[0] for r in cost.rows] == [ids["w2"], ids["w1"], ids["w4"]]
    assert cost.rows[0][4] == pytest.approx(0.04 / 3)
    assert [(r[0], r[2], r[3]) for r in lineage.rows] == [(ids["w3"], "policy", 0), (ids["w2"], "mutation", 1),
                                                            (ids["w1"], "seed", 2)]
    assert errors.columns == ["error_kind", "n", "mean_latency_s"] and errors.rows == []


def test_readme_queries_select_a_whole_loop_by_its_name(loop_demo):
    """The same example stored as round 0 of a loop called ``demo`` (as ``workflow-rl loop`` stores
    it: run ``demo/r0`` under loop ``demo``): the queries of docs/storage.md give the same answers."""
    engine, ids = loop_demo
    best, unsolved, by_round, *_ = (execute_sql(engine, q) for q in readme_queries())
    assert [r[0] for r in best.rows] == [ids["w2"], ids["w1"], ids["w3"]]
    assert {r[1] for r in best.rows} == {0}  # loop_round
    assert [r[:4] for r in unsolved.rows] == [("calc", "validation", "v3", 2)]
    assert [(r[0], r[1], r[2]) for r in by_round.rows] == [(0, 0, 1), (0, 1, 2)]
