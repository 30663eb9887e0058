"""A slow, one-at-a-time LLM endpoint: its waits are never stored as rewards.

Many evaluations in flight against a scripted server on 127.0.0.1 that serves one request at a
time store no ``timeout`` (the wall limit does not charge LLM waits); a server slower than the LLM
wait bound ends ``workflow-rl search`` with one error line and nothing stored, like an outage.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from operators.runtime import Limits
from storage.engine import open_db, session_scope
from storage.repo import add_workflow, get_or_create_run
from tests.helpers.reliability import query_rows
from workflow_rl.cli import main
from workflow_rl.llm import OpenAICompatibleClient
from workflow_rl.llm.testing import ScriptedOpenAIServer, ScriptedReply
from workflow_rl.loop.evaluation import BenchmarkEvaluator
from workflow_rl.tasks.options import build_benchmark


def _gsm8k_file(tmp_path) -> str:
    path = tmp_path / "sums.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"p{a}", "question": f"What is {a} plus 10?",
                                          "answer": f"{a} + 10 = {a + 10}\n#### {a + 10}"}) for a in range(8)))
    return str(path)


def _adder(delay_s: float):
    def reply(request: dict) -> ScriptedReply:
        """A model that adds the numbers of 'What is A plus B?', taking ``delay_s`` per request."""
        match = re.search(r"What is (\d+) plus (\d+)\?", request["messages"][-1]["content"])
        total = int(match.group(1)) + int(match.group(2)) if match else 0
        return ScriptedReply(text=f"<thought>adding</thought><answer>{total}</answer>", delay_s=delay_s)

    return reply



def test_many_evaluations_on_a_one_at_a_time_server_store_no_timeouts(tmp_path):
    # 4 workflows x 8 problems in flight; the server answers one request per 0.06 s, so the last
    # answer comes ~2 s in, twice the wall limit. Every row must be the workflow's real score.
    db = str(tmp_path / "run.db")
    engine = open_db(db)
    bench = build_benchmark("gsm8k", {"path": _gsm8k_file(tmp_path), "fractions": "0,1,0"})
    codes = [f"async def solve(problem, ops):\n    answer = await ops.answer_generate(problem)\n    return answer{tail}\n"
             for tail in ("", ".strip()", " + ''", ".lower()")]

    async def run(client):
        with session_scope(engine) as s:
            run_id = get_or_create_run(s, "slow", "gsm8k").id
            ids = [add_workflow(s, run_id, code, "seed", round=0).id for code in codes]
        async with BenchmarkEvaluator(engine, bench, llm=client, workers=2, limits=Limits(wall_s=1.0)) as ev:
            pids = ev.problem_ids("validation")
            await ev.execute([("async def solve(problem, ops):\n    return problem\n", pids[0])])  # warm workers
            return await asyncio.gather(*(ev.evaluate(run_id, wid, code, pids) for wid, code in zip(ids, codes, strict=True)))

    with ScriptedOpenAIServer(_adder(0.06), slots=1) as server:
        batches = asyncio.run(run(OpenAICompatibleClient(server.url, "m", max_concurrency=8)))
        assert server.request_count == 32
    assert sum(b.executed for b in batches) == 32
    rows = query_rows(db, "SELECT reward, error_kind, latency_s FROM evaluations")
    assert len(rows) == 32 and not [r for r in rows if r.error_kind == "timeout"], rows
    assert all(r.reward == 1.0 for r in rows)
    assert max(r.latency_s for r in rows) > 1.0  # the premise: executions outlived the wall limit


def test_server_slower_than_the_wait_bound_stops_search_without_storing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKFLOW_RL_LLM_NO_CACHE", "1")
    monkeypatch.setenv("WORKFLOW_RL_LLM_MAX_WAIT", "0.5")
    db = str(tmp_path / "run.db")
    with ScriptedOpenAIServer(_adder(3.0), slots=1) as server:
        argv = ["--db", db, "search", "--run", "w", "--benchmark", "gsm8k", "--data", _gsm8k_file(tmp_path),
                "--executor", f"{server.url}#m", "--max-simulations", "1", "--budget", "0",
                "--batch-size", "3", "--children", "2", "--workers", "2"]
        with pytest.raises(SystemExit) as exit_:
            main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_.value.code == 1 and len(err) == 1, err
    assert err[0].startswith("error: LLM endpoint unavailable") and "LLM wait bound of 0.5s" in err[0], err
    assert "rerun the same command" in err[0] and "Traceback" not in err[0]
    assert query_rows(db, "SELECT COUNT(*) FROM evaluations")[0][0] == 0  # no reward stored for the lost calls
