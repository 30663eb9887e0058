"""Token and dollar budgets of `workflow-rl search` against the scripted endpoint on 127.0.0.1.

The search ends at or under each bound, a resume with a higher bound continues the same run and
pays only for what was not stored, and a loopback endpoint's evaluations cost 0.0, not NULL.
The response cache is off, so every token the endpoint served is a token the search paid for.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from storage.engine import open_db
from workflow_rl.cli import main
from workflow_rl.llm.testing import ScriptedOpenAIServer, ScriptedReply, _prompt_text
from workflow_rl.loop import search_run as search_cli

REPO = Path(__file__).resolve().parents[3]

PAIRS = [(a, b) for a in range(1, 7) for b in (10, 20, 30, 40)]  # 24 problems


def _gsm8k_file(tmp_path) -> str:
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"p{a}-{b}", "question": f"What is {a} plus {b}?",
                                          "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}) for a, b in PAIRS))
    return str(path)


class Adder:
    """A fake model that adds 'What is A plus B?' and counts the tokens it served (the server's
    own count: whitespace words of the prompt and of the reply)."""

    def __init__(self, delay_s: float = 0.0):
        self.served = 0
        self.delay_s = delay_s
        self._lock = threading.Lock()

    def __call__(self, request: dict) -> ScriptedReply:
        prompt = request["messages"][-1]["content"]
        if "<solution_letter>" in prompt:
            reply = "<thought>agree</thought><solution_letter>A</solution_letter>"
        else:
            match = re.search(r"What is (\d+) plus (\d+)\?", prompt)
            total = int(match.group(1)) + int(match.group(2)) if match else 0
            reply = f"<thought>adding</thought><answer>{total}</answer>"
        with self._lock:
            self.served += len(_prompt_text(request).split()) + len(reply.split()) * int(request.get("n", 1))
        return ScriptedReply(text=reply, delay_s=self.delay_s)


def _run(db: str) -> tuple[dict, list]:
    """The run's state and its stored validation evaluations (id, tokens, cost)."""
    engine = open_db(db)
    try:
        with engine.connect() as conn:
            (state,) = conn.execute(text("SELECT state FROM runs WHERE name = 'b'")).one()
            rows = conn.execute(text(
                "SELECT e.id, e.prompt_tokens + e.completion_tokens AS tokens, e.cost FROM evaluations e "
                "JOIN problems p ON p.id = e.problem_id WHERE p.split = 'validation' ORDER BY e.id")).all()
    finally:
        engine.dispose()
    return (json.loads(state) if isinstance(state, str) else state), [tuple(r) for r in rows]


@pytest.fixture(params=[0.0])
def search_argv(tmp_path, monkeypatch, request):
    """``main`` argv of a gsm8k search (batch 4, 3 children, no evaluation budget) on a fresh server
    whose replies take ``request.param`` seconds."""
    monkeypatch.setenv("WORKFLOW_RL_LLM_NO_CACHE", "1")
    monkeypatch.delenv("WORKFLOW_RL_LLM_PRICE", raising=False)
    adder = Adder(request.param)
    with ScriptedOpenAIServer(adder) as server:
        argv = ["--db", str(tmp_path / "run.db"), "search", "--run", "b", "--benchmark", "gsm8k", "--data",
                _gsm8k_file(tmp_path), "--executor", f"{server.url}#m", "--budget", "0", "--batch-size", "4",
                "--children", "3", "--workers", "2"]
        yield argv, adder


def test_token_budget_stops_at_or_under_the_bound_and_a_resume_spends_only_the_difference(search_argv):
    argv, adder = search_argv
    db = argv[1]
    main([*argv, "--token-budget", "1500"])
    state, rows = _run(db)
    tokens = sum(r[1] for r in rows)
    assert state["stop_reason"] == "token_budget" and state["next_simulation"] >= 2  # it expanded, then stopped
    assert 0 < tokens <= 1500
    assert adder.served == tokens  # every token the endpoint served is stored and counted
    # A model on a loopback address is free: cost 0.0, not NULL ("unknown"); tokens still counted.
    assert all(r[2] == 0.0 for r in rows)

    # The same run with a bound it has already used up stops at once: the stored rows are counted.
    served = adder.served
    main([*argv, "--token-budget", "500"])
    again, same = _run(db)
    assert again["stop_reason"] == "token_budget" and same == rows and adder.served == served
    assert again["next_simulation"] == state["next_simulation"]

    main([*argv, "--token-budget", "2500"])
    resumed, more = _run(db)
    total = sum(r[1] for r in more)
    assert resumed["stop_reason"] == "token_budget" and resumed["next_simulation"] > state["next_simulation"]
    assert tokens < total <= 2500
    assert more[: len(rows)] == rows  # the first command's rows are kept as they were ...
    assert adder.served == total  # ... and the resume paid only for the rows it added


def test_cost_budget_with_a_stated_price_stops_at_or_under_the_bound(search_argv):
    argv, adder = search_argv
    # 1000 USD per million tokens in and out: 0.001 USD a token, so 1.5 USD is 1500 tokens.
    main([*argv, "--price", "1000,1000", "--cost-budget", "1.5"])
    state, rows = _run(argv[1])
    assert state["stop_reason"] == "cost_budget" and state["next_simulation"] >= 2
    assert all(cost == pytest.approx(tokens * 0.001) for _, tokens, cost in rows)
    assert 0 < sum(r[2] for r in rows) <= 1.5
    assert adder.served == sum(r[1] for r in rows)


def test_cost_budget_needs_a_known_price(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(search_cli, "require_reachable", lambda *a, **k: None)  # the address is never dialled
    monkeypatch.delenv("WORKFLOW_RL_LLM_PRICE", raising=False)
    monkeypatch.delenv("WORKFLOW_RL_LLM_PRICES", raising=False)
    db = tmp_path / "never.db"
    with pytest.raises(SystemExit) as exit_:
        main(["--db", str(db), "search", "--run", "c", "--benchmark", "gsm8k", "--data", _gsm8k_file(tmp_path),
              "--executor", "http://192.0.2.1:8000/v1#paid-model", "--cost-budget", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1 and "--cost-budget needs the price of 'paid-model'" in err[0]
    assert not db.exists()


def test_price_without_an_executor_is_refused(tmp_path, capsys):
    db = tmp_path / "never.db"
    with pytest.raises(SystemExit) as exit_:
        main(["--db", str(db), "search", "--run", "p", "--price", "1,1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1 and "give --executor" in err[0]
    assert not db.exists()


def _rows_of_children(db: str) -> int:
    """Stored evaluations of non-seed workflows (0 while the database does not exist yet)."""
    if not os.path.exists(db):
        return 0
    engine = open_db(db)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM evaluations e JOIN workflows w ON w.id = e.workflow_id "
                                     "WHERE w.source <> 'seed'")).scalar_one()
    except Exception:  # noqa: BLE001 (tables not created yet by the starting process)
        return 0
    finally:
        engine.dispose()


@pytest.mark.parametrize("search_argv", [0.2], indirect=True)
def test_token_budget_after_sigkill_counts_what_the_killed_process_stored(search_argv):
    argv, adder = search_argv
    db = argv[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from workflow_rl.cli import main; main()", *argv,
                             "--token-budget", "2500"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _rows_of_children(db) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its sandbox workers
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-search, not finished
    time.sleep(0.5)  # replies to calls the killed process had in flight
    _, stored = _run(db)
    served = adder.served

    main([*argv, "--token-budget", "2500"])
    state, rows = _run(db)
    assert state["stop_reason"] == "token_budget"
    assert rows[: len(stored)] == stored  # the killed process's rows are reused, not run again
    assert sum(r[1] for r in rows) <= 2500
    assert adder.served - served == sum(r[1] for r in rows[len(stored):])  # the resume paid for new rows only
