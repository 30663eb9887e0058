"""Shared helpers of the reliability tests: the real CLI as a subprocess, database dumps and counts.

A module (not a conftest) so that its names cannot clash with other test directories' fixtures.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine, func, inspect, select, text

from storage.engine import read_session_scope, session_scope
from storage.models import Evaluation, Problem, Run, SearchNode, Workflow

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from workflow_rl.cli import main; main()"]
"""The console script's entry point, run by this interpreter (same venv, no PATH lookup)."""


def cli_env(**extra: str) -> dict[str, str]:
    """Environment of a CLI subprocess: the repository importable, no debug tracebacks, no colours."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORKFLOW_RL_DEBUG", "WORKFLOW_RL_DB")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def spawn(args: Sequence[str], cwd: Path | None = None, raw: bool = False, **env: str) -> subprocess.Popen:
    """Start ``workflow-rl ARGS`` (or, with ``raw``, the argv ``args`` itself) in its own process
    group, so that SIGKILL reaches its sandbox workers too."""
    argv = list(args) if raw else [*CLI, *args]
    # stderr goes to a file, not a pipe: a chatty process must never block on a full pipe.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, cwd=cwd,
                            env=cli_env(**env))
    proc.stderr_log = log  # type: ignore[attr-defined]
    return proc


def stderr_of(proc: subprocess.Popen) -> str:
    """Everything a :func:`spawn` ed process wrote to stderr so far."""
    log = proc.stderr_log  # type: ignore[attr-defined]
    log.seek(0)
    return log.read().decode(errors="replace")


def run_cli(args: Sequence[str], cwd: Path | None = None, timeout: float = 300,
            **env: str) -> subprocess.CompletedProcess:
    """Run ``workflow-rl ARGS`` to completion; returns the completed process (text output)."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, env=cli_env(**env),
                          timeout=timeout)


CLI_TRAIN_FLAGS = {"out_dir": "--out", "cache_dir": "--cache-dir"}
"""TrainConfig fields whose CLI flag is not simply ``--field-name``."""


def train_registered() -> bool:
    """Whether ``workflow-rl train`` exists in this checkout (the learner registers it)."""
    from workflow_rl.cli import app

    return "train" in {c.name for c in app.registered_commands}


def train_command(db: str, options: dict, prelude: str = "") -> list[str]:
    """argv of one training process: ``workflow-rl train`` once registered, else the same library call.

    ``prelude`` is Python run first in that process (fault injection: e.g. SIGKILL inside a save).
    """
    if train_registered():
        argv = ["--db", db, "train"]
        for key, value in options.items():
            flag = CLI_TRAIN_FLAGS.get(key, "--" + key.replace("_", "-"))
            if value is True:
                argv.append(flag)
            elif value is not False and value is not None:
                argv += [flag, str(value)]
        call = f"from workflow_rl.cli import main; main({argv!r})"
    else:
        call = ("from workflow_rl.learner.trainer import train; from workflow_rl.learner.config import TrainConfig; "
                f"train(TrainConfig(**{options!r}), {db!r})")
    return [sys.executable, "-c", f"{prelude}\n{call}" if prelude else call]


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (the CLI and any sandbox workers) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def wait_until(predicate, proc: subprocess.Popen, timeout: float, poll: float = 0.05) -> bool:
    """Poll ``predicate()`` until it is true (True) or ``proc`` exits / ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if predicate():
            return True
        time.sleep(poll)
    return False


def stays_alive(proc: subprocess.Popen, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``proc`` exits first; True when it is still running afterwards."""
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return True
    return False


def evaluation_count(engine: Engine, run_name: str) -> int:
    """Stored evaluations of a run (0 when the run does not exist yet); a read-only transaction,
    so polling never takes the write lock from the process under test."""
    with read_session_scope(engine) as s:
        return s.scalar(select(func.count(Evaluation.id)).join(Run, Run.id == Evaluation.run_id)
                        .where(Run.name == run_name)) or 0


def evaluation_set(engine: Engine, run_name: str) -> list[tuple]:
    """(workflow code hash, problem key, repeat, reward) of every evaluation of a run, sorted."""
    with session_scope(engine) as s:
        rows = s.execute(
            select(Workflow.code_hash, Problem.key, Evaluation.repeat, Evaluation.reward)
            .join(Workflow, Workflow.id == Evaluation.workflow_id)
            .join(Problem, Problem.id == Evaluation.problem_id)
            .join(Run, Run.id == Evaluation.run_id)
            .where(Run.name == run_name)
        ).all()
    return sorted(tuple(r) for r in rows)


def duplicate_evaluations(engine: Engine) -> list[tuple]:
    """(workflow, problem, repeat) keys stored more than once, anywhere in the database."""
    with session_scope(engine) as s:
        return list(s.execute(
            select(Evaluation.workflow_id, Evaluation.problem_id, Evaluation.repeat, func.count())
            .group_by(Evaluation.workflow_id, Evaluation.problem_id, Evaluation.repeat)
            .having(func.count() > 1)
        ).all())


def workflow_set(engine: Engine, run_name: str) -> list[tuple]:
    """(code hash, source, round, valid, parent code hash) of every workflow of a run, sorted."""
    with session_scope(engine) as s:
        run_id = s.scalar(select(Run.id).where(Run.name == run_name))
        rows = s.scalars(select(Workflow).where(Workflow.run_id == run_id)).all()
        by_id = {w.id: w.code_hash for w in rows}
        return sorted((w.code_hash, w.source, w.round, w.valid, by_id.get(w.parent_id)) for w in rows)


def node_count(engine: Engine, run_name: str) -> int:
    """Search nodes stored for a run."""
    with session_scope(engine) as s:
        return s.scalar(select(func.count(SearchNode.id)).join(Run, Run.id == SearchNode.run_id)
                        .where(Run.name == run_name)) or 0


def dump(engine: Engine) -> dict[str, list[tuple]]:
    """Every row of every table (sorted), for "the database is unchanged" checks on any backend."""
    out: dict[str, list[tuple]] = {}
    with engine.connect() as conn:
        for table in sorted(inspect(conn).get_table_names()):
            rows = conn.execute(text(f'SELECT * FROM "{table}"')).all()
            out[table] = sorted(tuple(map(repr, r)) for r in rows)
    return out


def sqlite_file_dump(path: Path) -> list[str]:
    """The SQL text dump of a SQLite file (schema and rows), read without taking any lock."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def query_rows(db: str, sql: str) -> list:
    """The rows of one read query on the database at URL ``db`` (opened and closed here)."""
    from storage.engine import open_db

    engine = open_db(db)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).all()
    finally:
        engine.dispose()
