"""``workflow-rl search --executor local`` end to end, as a subprocess, with the real SmolLM2-135M.

The gsm8k seeds call ``answer_generate`` (and the mutated children ``programmer``, ``sc_ensemble``,
...), so every evaluation asks the model. Requests are counted in the server's own access log
(``WORKFLOW_RL_LOCAL_LOG``); ``WORKFLOW_RL_LLM_MAX_TOKENS`` keeps each reply short.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

from sqlalchemy import text

from storage.engine import open_db
from tests.helpers.reliability import kill_group, run_cli, spawn, stderr_of, wait_until
from tests.workflow_rl.llm.test_search_budgets import _gsm8k_file, _run  # the scripted-endpoint budget tests

TOKEN_BUDGET = 900


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"WORKFLOW_RL_LLM_CACHE": str(tmp_path / "cache.sqlite"), "WORKFLOW_RL_LLM_MAX_TOKENS": "16",
            "WORKFLOW_RL_LOCAL_LOG": str(tmp_path / "server.log"), "WORKFLOW_RL_LLM_CONCURRENCY": "",
            "WORKFLOW_RL_LLM_NO_CACHE": "", "WORKFLOW_RL_LLM_PRICE": "", **extra}


def _argv(tmp_path: Path, db: str, *more: str) -> list[str]:
    return ["--db", db, "search", "--run", "b", "--benchmark", "gsm8k", "--data", _gsm8k_file(tmp_path),
            "--executor", "local", "--budget", "0", "--batch-size", "1", "--children", "1",
            "--max-simulations", "4", "--workers", "1", *more]


def _posts(tmp_path: Path) -> int:
    """Chat completions the local server(s) of this test answered (their access log lines)."""
    log = tmp_path / "server.log"
    return log.read_text(errors="replace").count("POST /v1/chat/completions") if log.exists() else 0


def _server_pids(tmp_path: Path) -> list[int]:
    log = tmp_path / "server.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [int(line.split()[-1]) for line in lines if line.startswith("# workflow-rl: server pid")]


def _cached(tmp_path: Path) -> int:
    """Replies in the response cache file (0 before the first one)."""
    try:
        conn = sqlite3.connect(f"file:{tmp_path / 'cache.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT count(*) FROM responses").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _evaluations(db: str) -> list[tuple]:
    """(workflow code hash, problem key, reward, tokens, error) of run b's evaluations, sorted."""
    engine = open_db(db)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT w.code_hash, p.key, e.reward, e.prompt_tokens + e.completion_tokens, e.error_message "
                "FROM evaluations e JOIN workflows w ON w.id = e.workflow_id JOIN problems p ON p.id = e.problem_id"
            )).all()
    finally:
        engine.dispose()
    return sorted(tuple(r) for r in rows)


def test_killed_local_search_resumes_from_the_cache_and_stops_at_its_token_budget(local_extra, tmp_path):
    db = f"sqlite:///{tmp_path / 'run.db'}"
    env = _env(tmp_path)
    proc = spawn(_argv(tmp_path, db, "--token-budget", str(TOKEN_BUDGET)), **env)
    try:
        # Two replies cached: the seed's, and the first of a child's several calls (its batch is
        # not stored yet), so the resume needs that reply again.
        assert wait_until(lambda: _cached(tmp_path) >= 2, proc, timeout=240), stderr_of(proc)
    finally:
        kill_group(proc)
    assert proc.returncode == -signal.SIGKILL
    (killed_server,) = _server_pids(tmp_path)
    deadline = time.monotonic() + 10
    while _alive(killed_server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(killed_server)  # the server died with its SIGKILLed command (PDEATHSIG)
    time.sleep(0.2)

    resumed = run_cli(_argv(tmp_path, db, "--token-budget", str(TOKEN_BUDGET)), timeout=300, **env)
    assert resumed.returncode == 0, resumed.stderr
    state, rows = _run(db)
    assert state["stop_reason"] == "token_budget" and state["next_simulation"] >= 2
    assert 0 < sum(r[1] for r in rows) <= TOKEN_BUDGET
    assert all(r[2] == 0.0 for r in rows)  # the local model is free; its tokens are still counted
    # No request was answered twice over the kill and the resume (a new server, on a new port):
    # every answered request is one cached reply, but for at most the one in flight at the kill.
    assert 0 <= _posts(tmp_path) - _cached(tmp_path) <= 1

    # The same search from scratch (a new database, a third server and port) is a pure replay.
    posts = _posts(tmp_path)
    db2 = f"sqlite:///{tmp_path / 'replay.db'}"
    replay = run_cli(_argv(tmp_path, db2, "--token-budget", str(TOKEN_BUDGET)), timeout=300, **env)
    assert replay.returncode == 0, replay.stderr
    assert _posts(tmp_path) == posts  # every reply came from the cache: keys do not depend on the port
    # The same evaluations (the error texts aside: a model-written program's run may differ in timing).
    assert [r[:4] for r in _evaluations(db2)] == [r[:4] for r in _evaluations(db)]
    assert len(_server_pids(tmp_path)) == 3 and not any(_alive(pid) for pid in _server_pids(tmp_path))


def test_a_local_server_killed_mid_search_ends_the_command_with_one_error_line(local_extra, tmp_path):
    db = f"sqlite:///{tmp_path / 'run.db'}"
    proc = spawn(_argv(tmp_path, db), **_env(tmp_path, WORKFLOW_RL_LLM_ATTEMPTS="1", WORKFLOW_RL_LLM_NO_CACHE="1"))
    try:
        assert wait_until(lambda: _posts(tmp_path) >= 1, proc, timeout=240), stderr_of(proc)
        (server,) = _server_pids(tmp_path)
        os.kill(server, signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        kill_group(proc)
    err = stderr_of(proc).strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1, err
    assert err[0].startswith("error: LLM endpoint unavailable:") and "rerun" in err[0] and "Traceback" not in err[0]
    # Nothing of the lost calls is stored as a reward: every stored row is a reply the model gave.
    rows = _evaluations(db)
    assert all(tokens > 0 for *_, tokens, _ in rows), rows
    assert not any(e and ("connection" in e.lower() or "unavailable" in e.lower()) for *_, e in rows), rows
