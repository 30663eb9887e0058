"""The llm proposer against a scripted OpenAI-compatible server on 127.0.0.1."""

import asyncio

from search.base import FailedExample, ProposalContext
from search.proposers.llm import LLMProposer, extract_workflow_code, render_prompt
from workflow_rl.llm import OpenAICompatibleClient
from workflow_rl.llm.testing import ScriptedOpenAIServer

OPS = ("calculate", "extract_expression", "extract_list", "median")
SEED = """async def solve(problem, ops):
    expression = await ops.extract_expression(problem)
    return await ops.calculate(expression)
"""
IMPROVED = """async def solve(problem, ops):
    if 'median' in problem:
        return await ops.median(await ops.extract_list(problem))
    return await ops.calculate(await ops.extract_expression(problem))
"""


def _context() -> ProposalContext:
    return ProposalContext(
        "calc", "Short word problems.", OPS, 7, SEED, 0.25,
        failures=(FailedExample(3, "Find the median of 3, 5, 9.", "5", "17"),
                  FailedExample(4, "Find the median of 1, 2.", "3/2", None, "operator_error: no expression")),
        history=(("insert ops.upper around expression", 0.0),),
    )


def test_prompt_renders_registry_operators_failures_and_history():
    prompt = render_prompt(_context())
    assert "ops.median(values: list) -> str" in prompt  # signature straight from the registry
    assert "ops.calculate(expression: str) -> str" in prompt
    assert "validation score 25.0%" in prompt
    assert "Problem: Find the median of 3, 5, 9.\nExpected: 5\nProduced: 17" in prompt
    assert "Produced: (no output)\nError: operator_error: no expression" in prompt
    assert "- insert ops.upper around expression -> 0.0%" in prompt
    assert SEED.strip() in prompt


def test_extract_workflow_code_variants():
    fenced = f"<modification>route medians</modification>\n```python\n{IMPROVED}```\nDone."
    assert extract_workflow_code(fenced) == IMPROVED
    assert extract_workflow_code(f"<graph>\n{IMPROVED}</graph>") == IMPROVED
    assert extract_workflow_code(f"Here you go:\n{IMPROVED}") == IMPROVED
    two = f"```python\nprint('x')\n```\n```\n{IMPROVED}```"
    assert extract_workflow_code(two) == IMPROVED  # the block that defines solve wins
    assert extract_workflow_code("I cannot help with that.") is None


def test_llm_proposer_end_to_end_over_http():
    replies = [f"<modification>route medians</modification>\n```python\n{IMPROVED}```", "no code here"]
    with ScriptedOpenAIServer() as server:
        server.enqueue(*replies)
        client = OpenAICompatibleClient(server.url, "opt-model", max_attempts=1)
        cands = asyncio.run(LLMProposer(client, temperature=0.5).propose(_context(), 2, seed=10))
        bodies = server.requests
    assert len(cands) == 2 and len(bodies) == 2
    assert sorted(b["seed"] for b in bodies) == [10, 11]
    assert all(b["temperature"] == 0.5 and b["top_p"] == 1.0 for b in bodies)
    good = next(c for c in cands if c.meta["parsed"])
    bad = next(c for c in cands if not c.meta["parsed"])
    assert good.code == IMPROVED and good.source == "llm" and good.description == "route medians"
    assert good.generation.prompt_text == render_prompt(_context())
    assert good.generation.sampler == "llm:opt-model" and good.generation.behavior_logprobs is None
    assert bad.code == "no code here"  # kept: the driver stores it as an invalid workflow


def test_llm_search_end_to_end(sqlite_url, monkeypatch):
    """`search --proposer llm` over HTTP: children stored with source llm and their generation rows."""
    from sqlalchemy import select

    from search.config import SearchConfig
    from storage.engine import open_db, session_scope
    from storage.models import Generation as GenerationRow
    from storage.models import Workflow
    from workflow_rl.loop.search_run import run_search

    monkeypatch.setenv("WORKFLOW_RL_LLM_NO_CACHE", "1")
    reply = f"<modification>route medians</modification>\n```python\n{IMPROVED}```"
    with ScriptedOpenAIServer(lambda request: reply) as server:
        config = SearchConfig(proposer="llm", batch_size=10, children=2, budget=0, max_simulations=1)
        result = asyncio.run(run_search(sqlite_url, "llm", config, optimizer=f"{server.url}#opt", workers=1))
        prompts = [r["messages"][-1]["content"] for r in server.requests]
    assert len(prompts) == 2 and "ops.median(values: list) -> str" in prompts[0]
    assert result.progress.nodes == 3  # 2 seeds + one new child (the second reply is its duplicate)
    with session_scope(open_db(sqlite_url)) as session:
        child = session.scalars(select(Workflow).where(Workflow.source == "llm")).one()
        gen = session.scalars(select(GenerationRow).where(GenerationRow.workflow_id == child.id)).one()
    assert child.code == IMPROVED and gen.completion_text == reply and gen.prompt_text == prompts[0]
    assert gen.sampler == "llm:opt" and gen.behavior_logprobs is None and gen.temperature == 0.8
