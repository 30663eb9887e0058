"""Benchmark options on the CLI (--data / --benchmark-option), endpoint outages, problem meta as extras.

End to end through the real CLI, sandbox and an OpenAI-compatible test server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket

import pytest
from typer.testing import CliRunner

from storage.engine import open_db
from tests.helpers.reliability import query_rows
from workflow_rl.cli import app, main
from workflow_rl.errors import WorkflowRLError
from workflow_rl.llm import OpenAICompatibleClient
from workflow_rl.llm.testing import ScriptedOpenAIServer, ScriptedReply
from workflow_rl.loop.evaluation import BenchmarkEvaluator
from workflow_rl.tasks.options import build_benchmark, parse_benchmark_options

PAIRS = [(a, b) for a in range(1, 7) for b in (10, 20, 30, 40)]  # 24 problems


def _closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gsm8k_file(tmp_path) -> str:
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"p{a}-{b}", "question": f"What is {a} plus {b}?",
                                          "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}) for a, b in PAIRS))
    return str(path)


def adder(request: dict) -> str:
    """A fake model that adds the two numbers of 'What is A plus B?' (ensembles pick A)."""
    prompt = request["messages"][-1]["content"]
    if "<solution_letter>" in prompt:
        return "<thought>agree</thought><solution_letter>A</solution_letter>"
    match = re.search(r"What is (\d+) plus (\d+)\?", prompt)
    total = int(match.group(1)) + int(match.group(2)) if match else 0
    return f"<thought>adding</thought><answer>{total}</answer>"



# ---------------------------------------------------------------- option parsing


def test_parse_and_build_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_benchmark_options(["seed=3", "fractions=0.5,0.2,0.3"], data="d/g.jsonl") == {
        "seed": "3", "fractions": "0.5,0.2,0.3", "path": str(tmp_path / "d" / "g.jsonl")}
    for items, data, needle in [(["seed"], None, "use KEY=VALUE"), (["=3"], None, "use KEY=VALUE"),
                                (["a b=1"], None, "use KEY=VALUE"), (["seed=1", "seed=2"], None, "given twice"),
                                (["path=x"], "y", "give one of them"), (["path="], None, "is empty")]:
        with pytest.raises(WorkflowRLError, match=needle):
            parse_benchmark_options(items, data)
    calc = build_benchmark("calc", {"seed": "3", "test_size": "2"})
    assert (calc.seed, len(calc.problems("test"))) == (3, 2)  # converted to int
    with pytest.raises(WorkflowRLError, match=r"seed='x' must be an integer"):
        build_benchmark("calc", {"seed": "x"})
    with pytest.raises(WorkflowRLError, match="has no option 'path'; its options: seed, train_size"):
        build_benchmark("calc", {"path": "/tmp/x"})
    with pytest.raises(WorkflowRLError, match="'files' cannot be set"):
        build_benchmark("gsm8k", {"files": "x"})
    gsm = build_benchmark("gsm8k", {"path": _gsm8k_file(tmp_path), "fractions": "0,1,0"})
    assert len(gsm.problems("validation")) == len(PAIRS) and gsm.problems("train") == []


def test_bad_option_is_one_line_and_creates_no_database(tmp_path, capsys):
    db = tmp_path / "never.db"
    for argv, needle in [(["--benchmark-option", "seed"], "use KEY=VALUE"),
                         (["--benchmark", "gsm8k", "--data", str(tmp_path / "missing.jsonl")], "file not found")]:
        with pytest.raises(SystemExit) as exit_:
            main(["--db", str(db), "search", "--run", "x", "--budget", "4", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 1 and len(err) == 1 and needle in err[0], err
    assert not db.exists()


# ---------------------------------------------------------------- GSM8K file end to end


def test_search_on_a_gsm8k_file_then_eval_and_resume_reuse_its_options(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKFLOW_RL_LLM_CACHE", str(tmp_path / "llm.sqlite"))
    data = _gsm8k_file(tmp_path)
    db = str(tmp_path / "run.db")
    runner = CliRunner()
    with ScriptedOpenAIServer(adder) as server:
        spec = f"{server.url}#m"
        common = ["--max-simulations", "1", "--budget", "0", "--batch-size", "3", "--children", "2",
                  "--workers", "2", "--executor", spec]
        result = runner.invoke(app, ["--db", db, "search", "--run", "g", "--benchmark", "gsm8k", "--data", data,
                                     *common])
        assert result.exit_code == 0, result.output
        assert server.request_count > 0
        (config,) = query_rows(db, "SELECT config FROM runs WHERE name = 'g'")
        assert json.loads(config[0])["benchmark_options"] == {"path": data}
        seeds = query_rows(db, "SELECT e.reward FROM evaluations e JOIN workflows w ON w.id = e.workflow_id "
                          "JOIN problems p ON p.id = e.problem_id WHERE w.source = 'seed' AND p.benchmark = 'gsm8k'")
        assert seeds and all(r.reward == 1.0 for r in seeds)  # the adder solves every problem
        best = int(re.search(r"workflow-rl .*eval (\d+) --split test", result.output).group(1))

        # eval names no file: it rebuilds the benchmark from the run's stored options.
        monkeypatch.chdir(tmp_path.parent)  # another directory: the stored path is absolute
        result = runner.invoke(app, ["--db", db, "eval", str(best), "--split", "test", "--executor", spec])
        assert result.exit_code == 0, result.output
        test_rows = query_rows(db, "SELECT e.reward FROM evaluations e JOIN problems p ON p.id = e.problem_id "
                              f"WHERE e.workflow_id = {best} AND p.split = 'test'")
        assert test_rows and len(test_rows) == len(build_benchmark("gsm8k", {"path": data}).problems("test"))
        assert f"mean reward {sum(r.reward for r in test_rows) / len(test_rows):.3f}" in result.output

        # A resume without --data continues on the same file (one more simulation).
        result = runner.invoke(app, ["--db", db, "search", "--run", "g", "--benchmark", "gsm8k",
                                     *common[:1], "2", *common[2:]])
        assert result.exit_code == 0, result.output
        assert "kept from the stored run" not in result.output
        (state,) = query_rows(db, "SELECT state FROM runs WHERE name = 'g'")
        assert json.loads(state[0])["next_simulation"] == 3


# ---------------------------------------------------------------- endpoint outage


def test_endpoint_outage_aborts_the_search_and_a_resume_reruns_the_batch(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKFLOW_RL_LLM_NO_CACHE", "1")
    monkeypatch.setenv("WORKFLOW_RL_LLM_ATTEMPTS", "2")
    data = _gsm8k_file(tmp_path)
    db = str(tmp_path / "run.db")
    down = {"on": True}

    def flaky(request: dict) -> str | ScriptedReply:
        """503 for every request while 'down' (an overloaded or broken endpoint), else the adder."""
        return ScriptedReply(status=503, body="{}", headers={"Retry-After": "0"}) if down["on"] else adder(request)

    with ScriptedOpenAIServer(flaky) as server:
        argv = ["--db", db, "search", "--run", "o", "--benchmark", "gsm8k", "--data", data, "--executor",
                f"{server.url}#m", "--max-simulations", "1", "--budget", "0", "--batch-size", "3",
                "--children", "2", "--workers", "2"]
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert exit_.value.code == 1 and len(err) == 1, err
        assert err[0].startswith("error: LLM endpoint unavailable") and "HTTP 503" in err[0]
        assert "rerun the same command" in err[0] and "Traceback" not in err[0]
        assert query_rows(db, "SELECT COUNT(*) FROM evaluations")[0][0] == 0  # no reward-0 rows stored

        down["on"] = False
        main(argv)  # the resume evaluates the aborted batch for real
    rows = query_rows(db, "SELECT w.source, e.reward, e.error_message FROM evaluations e "
                     "JOIN workflows w ON w.id = e.workflow_id")
    assert all("503" not in (r.error_message or "") for r in rows)
    seeds = [r.reward for r in rows if r.source == "seed"]
    assert seeds and all(reward == 1.0 for reward in seeds)  # the aborted batch, now really scored


def test_closed_port_aborts_evaluation_without_storing(tmp_path):
    """The evaluator, given an executor on a closed port: one WorkflowRLError, no rows stored."""
    db = str(tmp_path / "run.db")
    engine = open_db(db)
    bench = build_benchmark("gsm8k", {"path": _gsm8k_file(tmp_path)})
    client = OpenAICompatibleClient(f"http://127.0.0.1:{_closed_port()}/v1", "m", max_attempts=2,
                                    backoff_base_s=0.01)
    code = "async def solve(problem, ops):\n    return (await ops.answer_generate(problem))['answer']\n"

    async def run():
        from storage.engine import session_scope
        from storage.repo import add_workflow, get_or_create_run

        with session_scope(engine) as s:
            run_id = get_or_create_run(s, "c", "gsm8k").id
            wid = add_workflow(s, run_id, code, "seed", round=0).id
        async with BenchmarkEvaluator(engine, bench, llm=client, workers=1) as evaluator:
            await evaluator.evaluate(run_id, wid, code, evaluator.problem_ids("validation")[:3])

    with pytest.raises(WorkflowRLError, match=r"LLM endpoint unavailable: .*127\.0\.0\.1.*connection failed"):
        asyncio.run(run())
    assert query_rows(db, "SELECT COUNT(*) FROM evaluations")[0][0] == 0


# ---------------------------------------------------------------- problem meta as OpContext.extras


def test_test_operator_uses_the_benchmarks_public_tests(tmp_path):
    """The problem text shows no tests and no signature: only ctx.extras (the problem's meta) has them."""
    path = tmp_path / "code.jsonl"
    path.write_text(json.dumps({"id": "add", "question": "Return the sum of the two arguments.",
                                "answer": "assert add(2, 3) == 5\nassert add(-1, 1) == 0",
                                "entry_point": "add", "public_tests": "assert add(2, 3) == 5"}) + "\n")
    bench = build_benchmark("jsonl", {"path": str(path), "fractions": "0,1,0", "scorer": "code",
                                      "task_type": "code"})
    prompts: list[str] = []

    def coder(request: dict) -> str:
        """Writes a wrong `add` first; fixes it when shown the failing public test."""
        prompts.append(request["messages"][-1]["content"])
        body = "a + b" if "fails its tests" in prompts[-1] else "a - b"
        return f"```python\ndef add(a, b):\n    return {body}\n```"

    db = str(tmp_path / "run.db")
    engine = open_db(db)
    code = bench.seed_workflows()["generate_test"]  # code_generate, then test

    async def run(client):
        from storage.engine import session_scope
        from storage.repo import add_workflow, get_or_create_run

        with session_scope(engine) as s:
            run_id = get_or_create_run(s, "x", "jsonl").id
            wid = add_workflow(s, run_id, code, "seed", round=0).id
        async with BenchmarkEvaluator(engine, bench, llm=client, workers=1) as evaluator:
            (pid,) = evaluator.problem_ids("validation")
            assert evaluator._context(pid).extras == {"entry_point": "add", "public_tests": "assert add(2, 3) == 5"}
            return await evaluator.evaluate(run_id, wid, code, [pid])

    with ScriptedOpenAIServer(coder) as server:
        batch = asyncio.run(run(OpenAICompatibleClient(server.url, "m")))
    assert "`add`" in prompts[0]  # code_generate was told the entry point
    assert any("assert add(2, 3) == 5" in p and "fails its tests" in p for p in prompts)  # repaired on it
    assert batch.records[0].reward == 1.0


def test_reference_solutions_never_reach_operators(tmp_path):
    path = tmp_path / "mbpp.jsonl"
    path.write_text(json.dumps({"task_id": 1, "text": "Add two numbers.", "code": "def add(a, b):\n    return a + b",
                                "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]}) + "\n")
    bench = build_benchmark("mbpp", {"path": str(path), "fractions": "0,1,0"})
    evaluator = BenchmarkEvaluator(open_db(str(tmp_path / "run.db")), bench)
    (pid,) = evaluator.problem_ids("validation")
    assert bench.problems("validation")[0].meta["solution"]  # the benchmark has it ...
    assert evaluator._context(pid).extras == {"entry_point": "add", "public_tests": "assert add(1, 2) == 3"}
