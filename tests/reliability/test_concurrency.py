"""Two searches and one trainer on the same database at once (SQLite file, and PostgreSQL).

All three are real processes started together: they open (and race to upsert the same new calc
problems into) one database, then write workflows, evaluations, nodes, train steps and
checkpoints concurrently. No "database is locked" (or serialization/deadlock) error may reach the
user, every process exits 0, and every row lands: each search's evaluations, workflows and tree
equal the same search run alone afterwards, and the trainer stored one train_steps row per step
and its checkpoints.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, insert, select, text

from search.config import SearchConfig
from storage.engine import open_db, session_scope
from storage.models import Base, PolicyCheckpoint, Run, TrainStep
from tests.helpers.learner import RUN
from tests.helpers.reliability import (
    CLI,
    cli_env,
    duplicate_evaluations,
    evaluation_set,
    node_count,
    train_command,
    workflow_set,
)
from workflow_rl.loop.search_run import run_search

SEARCHES = {"left": {"seed": 1}, "right": {"seed": 2}}
SEARCH = {"budget": 160, "batch_size": 8, "children": 3}
TRAIN_STEPS = 6
BUSY_WORDS = ("database is locked", "database is busy", "could not serialize", "deadlock", "Traceback")


def _copy_database(src_url: str, dst_url: str) -> None:
    """Copy every row (ids included) into a fresh database of any backend; fix its sequences."""
    src, dst = open_db(src_url), open_db(dst_url)
    with src.connect() as read, dst.begin() as write:
        for table in Base.metadata.sorted_tables:
            rows = [dict(r._mapping) for r in read.execute(select(table))]
            if rows:
                write.execute(insert(table), rows)
        if dst.dialect.name == "postgresql":
            for table in Base.metadata.sorted_tables:
                write.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                   f"coalesce((SELECT max(id) FROM {table.name}), 0) + 1, false)"))
    src.dispose()
    dst.dispose()


def _search_args(db: str, run: str, seed: int) -> list[str]:
    return ["--db", db, "search", "--run", run, "--seed", str(seed), "--budget", str(SEARCH["budget"]),
            "--batch-size", str(SEARCH["batch_size"]), "--children", str(SEARCH["children"]), "--workers", "1"]


def _train_args(db: str, out: str, cache: str) -> list[str]:
    return train_command(db, {"run": RUN, "out_dir": out, "cache_dir": cache, "batch_size": 8,
                              "micro_batch_size": 8, "max_steps": TRAIN_STEPS, "epochs": 4, "lr": 1e-3,
                              "save_every": 2})


async def _run_all(commands: dict[str, list[str]]) -> dict[str, tuple[int, str]]:
    async def one(args: list[str]) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE, env=cli_env())
        _, err = await asyncio.wait_for(proc.communicate(), timeout=600)
        return proc.returncode, err.decode(errors="replace")

    results = await asyncio.gather(*(one(a) for a in commands.values()))
    return dict(zip(commands, results, strict=True))


def _concurrent_run(url: str, base_url: str, tiny_cache: str, tmp_path) -> None:
    if url != base_url:
        _copy_database(base_url, url)
    commands = {name: [*CLI, *_search_args(url, name, kw["seed"])] for name, kw in SEARCHES.items()}
    commands["train"] = _train_args(url, str(tmp_path / "ckpt"), tiny_cache)
    results = asyncio.run(_run_all(commands))
    for name, (code, err) in results.items():
        assert code == 0, f"{name} failed:\n{err[-3000:]}"
        for word in BUSY_WORDS:
            assert word not in err, f"{name} surfaced {word!r}:\n{err[-3000:]}"

    engine = open_db(url)
    rows = 0
    for name, kw in SEARCHES.items():  # the same searches alone, afterwards, as the reference
        alone = asyncio.run(run_search(url, f"{name}-alone", SearchConfig(**SEARCH, **kw), workers=1))
        got = evaluation_set(engine, name)
        assert got == evaluation_set(engine, f"{name}-alone")
        assert len(got) == alone.progress.evaluations
        assert workflow_set(engine, name) == workflow_set(engine, f"{name}-alone")
        assert node_count(engine, name) == len(alone.tree) - 1
        rows += len(got)
    assert duplicate_evaluations(engine) == []
    with session_scope(engine) as s:
        run_id = s.scalar(select(Run.id).where(Run.name == RUN))
        steps = s.scalars(select(TrainStep.step).where(TrainStep.run_id == run_id).order_by(TrainStep.step)).all()
        checkpoints = s.scalar(select(func.count(PolicyCheckpoint.id)).where(PolicyCheckpoint.run_id == run_id))
        statuses = dict(s.execute(select(Run.name, Run.status).where(Run.name.in_(list(SEARCHES)))).all())
    assert steps == list(range(1, TRAIN_STEPS + 1))
    assert checkpoints == TRAIN_STEPS // 2  # saves at steps 2 and 4, then the final one at 6
    assert statuses == dict.fromkeys(SEARCHES, "done")
    engine.dispose()
    print(f"RELIABILITY concurrency backend={url.split(':')[0]} rows_checked={rows + len(steps) + checkpoints}")


@pytest.mark.slow
def test_two_searches_and_a_trainer_on_one_sqlite_file(train_db, tiny_cache, tmp_path):
    _concurrent_run(train_db, train_db, tiny_cache, tmp_path)


@pytest.mark.slow
@pytest.mark.postgres
def test_two_searches_and_a_trainer_on_postgresql(pg_url, train_db, tiny_cache, tmp_path):
    _concurrent_run(pg_url, train_db, tiny_cache, tmp_path)
