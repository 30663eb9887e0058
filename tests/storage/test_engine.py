"""Engine behaviour: SQLite pragmas, foreign keys, read-only transactions, concurrent writer processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import exc, func, select, text

from storage import open_db, read_session_scope, repo, session_scope
from storage.models import Evaluation, PolicyCheckpoint, SearchNode, TrainStep, Workflow

WRITER = Path(__file__).with_name("_concurrent_writer.py")


def test_sqlite_pragmas(tmp_path: Path):
    engine = open_db(str(tmp_path / "p.db"))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    engine.dispose()


def test_foreign_keys_are_enforced(engine):
    with pytest.raises(exc.IntegrityError), session_scope(engine) as s:
        repo.add_workflow(s, 12345, "async def solve(problem, ops):\n    return 1\n", "seed")
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(Workflow)) == 0


def test_read_only_scope_rejects_writes_and_pool_stays_writable(engine):
    with session_scope(engine) as s:
        repo.get_or_create_run(s, "r", "calc")
    for _ in range(3):  # the same pooled connection is reused: read-only must not leak into writes
        with pytest.raises(exc.DBAPIError), read_session_scope(engine) as s:
            s.execute(text("DELETE FROM runs"))
        with read_session_scope(engine) as s:
            assert repo.find_run(s, "r") is not None
        with session_scope(engine) as s:
            repo.get_or_create_run(s, f"r{_}", "calc")
    with read_session_scope(engine) as s:
        assert len(repo.list_runs(s)) == 4


def _launch(url: str, tmp_path: Path, roles: list[tuple[str, int]]) -> list[subprocess.CompletedProcess]:
    go = tmp_path / "go"
    procs, readies = [], []
    for worker, (role, n_tx) in enumerate(roles):
        ready = tmp_path / f"ready{worker}"
        readies.append(ready)
        procs.append(subprocess.Popen(
            [sys.executable, str(WRITER), url, str(worker), role, str(n_tx), str(ready), str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in readies) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # start all writers at the same moment, on a database none has migrated yet
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_concurrent_searches_and_trainer_lose_nothing(db_url: str, tmp_path: Path):
    """Two search-like writers and one trainer at once on one database: all finish, every row lands."""
    n_search, n_train = 30, 15
    results = _launch(db_url, tmp_path, [("search", n_search), ("search", n_search), ("train", n_train)])
    for result in results:
        assert result.returncode == 0, result.stderr[-2000:]
        assert "locked" not in result.stderr
    engine = open_db(db_url)
    with read_session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(Workflow)) == 1 + 2 * n_search  # shared one deduped
        own = 2 * n_search * 5  # every worker's own workflow x 5 problems
        shared = n_search * 5  # repeats 0..n-1 x 5 problems, sent by both workers, stored once
        assert s.scalar(select(func.count()).select_from(Evaluation)) == own + shared
        node = s.scalars(select(SearchNode)).one()
        assert (node.visits, node.value_sum) == (2 * n_search, pytest.approx(0.5 * 2 * n_search))
        assert s.scalar(select(func.count()).select_from(TrainStep)) == n_train
        assert s.scalar(select(func.count()).select_from(PolicyCheckpoint)) == n_train
    engine.dispose()


def test_open_read_transaction_does_not_block_writers(engine):
    """A long read (e.g. `workflow-rl sql` while a search runs) must not make writers wait or fail."""
    with session_scope(engine) as s:
        repo.get_or_create_run(s, "before", "calc")
    with read_session_scope(engine) as reader:
        assert [r.name for r in repo.list_runs(reader)] == ["before"]
        with session_scope(engine) as writer:
            repo.get_or_create_run(writer, "during", "calc")
        assert [r.name for r in repo.list_runs(reader)] == ["before"]  # its snapshot is stable
    with read_session_scope(engine) as s:
        assert [r.name for r in repo.list_runs(s)] == ["before", "during"]


def test_run_in_transaction_survives_a_postgres_deadlock(pg_url: str):
    """Two writers lock two nodes in opposite order: the server aborts one, the retry completes it."""
    import threading

    from storage import run_in_transaction

    engine = open_db(pg_url)
    with session_scope(engine) as s:
        run = repo.get_or_create_run(s, "r", "calc")
        nodes = []
        for i in range(2):
            w = repo.add_workflow(s, run.id, f"async def solve(problem, ops):\n    return {i}\n", "seed")
            nodes.append(repo.upsert_search_node(s, run.id, w.id).id)
    barrier = threading.Barrier(2, timeout=30)
    calls: list[int] = []
    errors: list[BaseException] = []

    def writer(first: int, second: int) -> None:
        def work(session) -> None:  # noqa: ANN001
            calls.append(first)
            repo.update_search_node(session, first, add_visits=1)
            if len(calls) <= 2:  # only the first attempts meet: they lock in opposite order
                barrier.wait()
            repo.update_search_node(session, second, add_visits=1)

        try:
            run_in_transaction(engine, work)
        except BaseException as error:  # surfaced to the test thread below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(nodes[0], nodes[1])),
               threading.Thread(target=writer, args=(nodes[1], nodes[0]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(calls) == 3  # exactly one transaction was aborted by the deadlock detector and re-run
    with read_session_scope(engine) as s:
        assert [n.visits for n in repo.search_nodes(s, run.id)] == [2, 2]
    engine.dispose()


def test_sqlite_write_scope_takes_the_write_lock_up_front(tmp_path: Path):
    """BEGIN IMMEDIATE: the lock is held before the first statement, so no later upgrade can fail."""
    import sqlite3

    path = tmp_path / "lock.db"
    engine = open_db(str(path))
    other = sqlite3.connect(path, isolation_level=None, timeout=0.05)
    with session_scope(engine) as s:
        s.connection()  # nothing written yet
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    with read_session_scope(engine) as s:
        s.execute(text("SELECT 1"))
        other.execute("BEGIN IMMEDIATE")  # a reader holds no write lock
        other.execute("COMMIT")
    other.close()
    engine.dispose()
