"""Evaluation insert throughput: the project's bulk path vs raw ``sqlite3.executemany``.

Both sides write the same rows into identically migrated SQLite files (same indexes, WAL,
synchronous=NORMAL, foreign keys on) in the same batches (one transaction per batch), and both
skip duplicates (``ON CONFLICT DO NOTHING`` / ``INSERT OR IGNORE``). The project side starts from
the dicts a search driver would hand it; the raw side from ready-made tuples.

usage: python benchmarks/bench_storage.py [--rows 100000] [--batch 5000]
Ends with ``RESULT storage_ratio=<project rate / raw rate>`` (target >= 0.5).
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from storage import open_db, repo, session_scope
from storage.models import utcnow

N_PROBLEMS = 1000


def _setup(path: Path, n_workflows: int) -> tuple[int, list[int], list[int]]:
    """Migrate a fresh file and add one run, the problems and the workflows; returns their ids."""
    engine = open_db(str(path))
    with session_scope(engine) as s:
        run = repo.get_or_create_run(s, "bench", "calc")
        pids = repo.upsert_problems(s, "calc", [{"key": f"p{i}", "split": "validation", "text": "t",
                                                 "reference": "1"} for i in range(N_PROBLEMS)])
        wids = [repo.add_workflow(s, run.id, f"async def solve(problem, ops):\n    return {i}\n", "seed").id
                for i in range(n_workflows)]
        run_id = run.id
    engine.dispose()
    return run_id, list(pids.values()), wids


def _rows(run_id: int, pids: list[int], wids: list[int]) -> list[dict]:
    return [{"run_id": run_id, "workflow_id": w, "problem_id": p, "repeat": 0, "reward": float((w + p) % 2),
             "answer": str(p), "output": f"the answer is {p}", "cost": 0.0001, "latency_s": 0.25,
             "prompt_tokens": 120, "completion_tokens": 30} for w in wids for p in pids]


def bench_project(path: Path, rows: list[dict], batch: int) -> float:
    """Rows per second through ``repo.bulk_insert_evaluations`` (one session_scope per batch)."""
    engine = open_db(str(path))
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        with session_scope(engine) as s:
            repo.bulk_insert_evaluations(s, rows[i : i + batch])
    elapsed = time.perf_counter() - start
    engine.dispose()
    return len(rows) / elapsed


RAW_SQL = (
    "INSERT OR IGNORE INTO evaluations (run_id, workflow_id, problem_id, repeat, reward, answer, output, "
    "error_kind, error_message, cost, latency_s, prompt_tokens, completion_tokens, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def bench_raw(path: Path, rows: list[dict], batch: int) -> float:
    """Rows per second through plain ``sqlite3.executemany`` with the same pragmas and batches."""
    now = utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")
    tuples = [(r["run_id"], r["workflow_id"], r["problem_id"], r["repeat"], r["reward"], r["answer"], r["output"],
               None, None, r["cost"], r["latency_s"], r["prompt_tokens"], r["completion_tokens"], now) for r in rows]
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=30000"):
        conn.execute(f"PRAGMA {pragma}")
    start = time.perf_counter()
    for i in range(0, len(tuples), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(RAW_SQL, tuples[i : i + batch])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return len(tuples) / elapsed


def _count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]


def main() -> None:
    """Run both sides on the same rows and print rates, ratio and the RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="evaluations to insert (multiple of 1000)")
    parser.add_argument("--batch", type=int, default=5000, help="rows per transaction")
    args = parser.parse_args()
    n_workflows = max(1, args.rows // N_PROBLEMS)
    with tempfile.TemporaryDirectory() as tmp:
        project_db, raw_db = Path(tmp, "project.db"), Path(tmp, "raw.db")
        run_id, pids, wids = _setup(project_db, n_workflows)
        assert _setup(raw_db, n_workflows) == (run_id, pids, wids)
        rows = _rows(run_id, pids, wids)
        raw_rate = bench_raw(raw_db, rows, args.batch)
        project_rate = bench_project(project_db, rows, args.batch)
        assert _count(project_db) == _count(raw_db) == len(rows), "both sides must store every row"
    ratio = project_rate / raw_rate
    print(f"rows={len(rows)} batch={args.batch}")
    print(f"{'path':<40}{'rows/s':>12}")
    print(f"{'raw sqlite3.executemany':<40}{raw_rate:>12,.0f}")
    print(f"{'repo.bulk_insert_evaluations':<40}{project_rate:>12,.0f}")
    print(f"RESULT raw_rows_per_s={raw_rate:.0f}")
    print(f"RESULT project_rows_per_s={project_rate:.0f}")
    print(f"RESULT storage_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
