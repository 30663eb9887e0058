"""calc-llm: calc's problems posed to an LLM; final-answer extraction from messy replies (hand-computed),
LLM-only seeds, and behaviourally identical workflows getting identical rewards from a stochastic server.

No model is needed: the executor is workflow_rl.llm.testing.ScriptedOpenAIServer.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from operators.validate import validate_workflow
from storage.engine import open_db
from workflow_rl.errors import WorkflowRLError
from workflow_rl.llm import OpenAICompatibleClient, ResponseCache
from workflow_rl.llm.testing import ScriptedOpenAIServer
from workflow_rl.loop.evaluation import BenchmarkEvaluator
from workflow_rl.tasks import get_benchmark
from workflow_rl.tasks.calc import CALC_OPERATORS
from workflow_rl.tasks.calc_llm import final_answer, score_llm_answer
from workflow_rl.tasks.options import build_benchmark


@pytest.mark.parametrize(("output", "kind", "expected"), [
    ("28/3", "number", "28/3"),  # a tool's bare answer is taken whole
    ("-11", "number", "-11"),
    ("The answer to the final result is 29.", "number", "29"),
    ("39 - 11 + 8 = 27", "number", "27"),  # the last number, not the question's
    ("So 40 + 33 = 73, and the answer is 191/6 or so", "number", "191/6"),
    ("<thought>7x = -77</thought><answer>x = -11</answer>", "number", "-11"),
    ("It is \\boxed{2.5} meters", "number", "2.5"),
    ("That makes 1,200 grams.", "number", "1200"),
    ("I cannot tell.", "number", None),
    ("olan", "text", "olan"),
    ("Reverse the text: \"Nalo\".", "text", "Nalo"),
    ("The answer is 'OLAN'. Done", "text", "OLAN"),
    ("The word backwards is olan.", "text", "olan"),
    ("", "text", None),
])
def test_final_answer(output, kind, expected):
    assert final_answer(output, kind) == expected


def test_scoring_is_calc_exact_comparison_of_the_final_answer():
    assert score_llm_answer("so the answer is 56/6", "28/3", "number").reward == 1.0  # exact value
    assert score_llm_answer("the answer is 9.33", "28/3", "number").reward == 0.0  # not exact
    assert score_llm_answer("The answer is 'olan'.", "olan", "text").reward == 1.0
    assert score_llm_answer("The answer is 'Olan'.", "olan", "text").reward == 0.0  # text is exact
    assert score_llm_answer(None, "3", "number").reward == 0.0


def test_same_problems_as_calc_with_llm_settings_and_options():
    calc, llm = get_benchmark("calc", seed=2, validation_size=7), get_benchmark("calc-llm", seed=2, validation_size=7)
    assert llm.name == "calc-llm-s2" and get_benchmark("calc-llm").name == "calc-llm" and llm.task_type == "math"
    pairs = list(zip(calc.problems("validation"), llm.problems("validation"), strict=True))
    assert all((a.key, a.text, a.reference) == (b.key, b.text, b.reference) for a, b in pairs)
    assert llm.problems("validation")[0].meta["llm_lenient"] is True
    built = build_benchmark("calc-llm", {"max_tokens": "32", "temperature": "0", "test_size": "5"})
    assert built.problems("test")[0].meta["llm_max_tokens"] == 32 and len(built.problems("test")) == 5
    with pytest.raises(WorkflowRLError, match="max_tokens"):
        get_benchmark("calc-llm", max_tokens=0)


def test_seeds_call_only_llm_operators_and_tools_are_available():
    bench = get_benchmark("calc-llm")
    assert set(bench.seed_workflows()) == {"answer_generate", "custom", "sc_ensemble"}
    for code in bench.seed_workflows().values():
        validate_workflow(code, bench.operator_names)
        assert not any(f"ops.{tool}(" in code for tool in CALC_OPERATORS)
    assert set(CALC_OPERATORS) <= set(bench.operator_names)


PLAIN = "async def solve(problem, ops):\n    return await ops.answer_generate(problem)\n"
BRANCHED = """async def solve(problem, ops):
    if "?" in problem:
        return await ops.answer_generate(problem)
    else:
        return await ops.answer_generate(problem)
"""


def _stochastic(references: dict[str, str], honour_seed: bool):
    """A responder right half of the time at random: drawn from the request's seed, or from a shared RNG."""
    shared = random.Random(0)

    def respond(request: dict) -> str:
        prompt = request["messages"][-1]["content"]
        rng = random.Random(f"{prompt}|{request['seed']}") if honour_seed else shared
        reference = next(ref for text, ref in references.items() if text in prompt)
        return f"I think the answer is {reference if rng.random() < 0.5 else '12345'}."

    return respond


def _evaluate(tmp_path, honour_seed: bool, cache: bool, repeats: int = 1):
    """Batches of PLAIN and BRANCHED on 12 validation problems, requests sent for PLAIN and in all."""
    from storage.engine import session_scope
    from storage.repo import add_workflow, get_or_create_run

    bench = get_benchmark("calc-llm", seed=0, validation_size=12, train_size=1, test_size=1)
    references = {p.text: p.reference for p in bench.problems("validation")}
    engine = open_db(f"sqlite:///{tmp_path}/db.sqlite")
    with ScriptedOpenAIServer(_stochastic(references, honour_seed)) as server:
        client = OpenAICompatibleClient(server.url, "m", cache=ResponseCache(tmp_path / "c.sqlite") if cache else None)

        async def run():
            async with BenchmarkEvaluator(engine, bench, llm=client, workers=2) as ev:
                with session_scope(engine) as session:
                    run_id = get_or_create_run(session, "r", bench.name, kind="search", config={}).id
                    wids = [add_workflow(session, run_id, code, "seed").id for code in (PLAIN, BRANCHED)]
                ids = ev.problem_ids("validation")
                a = await ev.evaluate(run_id, wids[0], PLAIN, ids, repeats)
                sent = server.request_count
                b = await ev.evaluate(run_id, wids[1], BRANCHED, ids, repeats)
                return a, b, sent, server.request_count

        return asyncio.run(run())


@pytest.mark.parametrize(("honour_seed", "cache"), [(False, True), (True, False)])
def test_behaviourally_identical_workflows_get_identical_rewards(tmp_path, honour_seed, cache):
    """answer_generate and the same call on both sides of an if send the same requests with the same
    seeds: a response cache (server ignoring seeds) or a seed-honouring server gives them the same replies."""
    a, b, sent_a, sent_total = _evaluate(tmp_path, honour_seed, cache)
    assert [r.reward for r in a.records] == [r.reward for r in b.records]
    assert 0 < a.mean_reward < 1  # the server is noisy: some guesses right, some wrong
    assert sent_total == (sent_a if cache else 2 * sent_a)  # with the cache the twin costs nothing


def test_noise_without_cache_or_seeds_is_what_this_removes(tmp_path):
    """The control: a server that ignores seeds, no cache: the twins' rewards differ by chance."""
    a, b, _, _ = _evaluate(tmp_path, False, cache=False)
    assert [r.reward for r in a.records] != [r.reward for r in b.records]


def test_repeats_draw_fresh_samples(tmp_path):
    """Repeat 1 uses other seeds than repeat 0 (a second repeat is not a replay of the first)."""
    a, b, sent_a, sent_total = _evaluate(tmp_path, True, cache=True, repeats=2)
    assert sent_a == 24 and sent_total == 24  # 12 problems x 2 repeats, the twin replays all
    by_repeat = [[r.output for r in a.records if r.repeat == k] for k in (0, 1)]
    assert by_repeat[0] != by_repeat[1]
    assert [r.reward for r in a.records] == [r.reward for r in b.records]
