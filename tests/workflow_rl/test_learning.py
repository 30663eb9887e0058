"""Issue 9 acceptance: the trained policy, sampling per problem, scores higher on the validation
split than the untrained one. A real (small) closed loop on ``calc``: mutation search, policy
groups on train problems, GRPO, again from the new checkpoint; then both policies sample
workflows for every validation problem and the workflows run in the real sandbox.
"""

from __future__ import annotations

import asyncio

from operators.registry import get_operators
from operators.runtime import Sandbox
from workflow_rl.benchmarks import get_benchmark
from workflow_rl.dataset import PromptSpec
from workflow_rl.loop import run_loop
from workflow_rl.loop_config import LoopConfig
from workflow_rl.policy import Policy


def sampled_success(path: str, cache: str, problems, n: int, seed: int = 1) -> float:
    """Mean reward of ``n`` workflows per problem sampled at T = 1 (each run on its own problem)."""
    bench = get_benchmark("calc")
    spec = PromptSpec(bench.description, tuple(bench.operator_names))
    policy = Policy.load(path, cache_dir=cache)
    samples = policy.sample([spec.render(p.text) for p in problems], n, 1.0, 1.0, 80, seed)

    async def run():
        async with Sandbox(get_operators(list(bench.operator_names)), workers=2) as box:
            return await box.run_many((x.text, problems[x.prompt_index].text) for x in samples)

    outputs = asyncio.run(run())
    scores = [asyncio.run(bench.score(problems[x.prompt_index], o.output, None)).reward
              for x, o in zip(samples, outputs, strict=True)]
    return sum(scores) / len(scores)


def test_trained_policy_beats_untrained_on_validation(tmp_path, tiny_cache):
    config = LoopConfig(run="learn", rounds=2, search_budget=40, search_batch=10, children=2,
                        train_problems=64, group_size=16, out_dir=str(tmp_path / "ckpt"), cache_dir=tiny_cache)
    result = run_loop(config, f"sqlite:///{tmp_path / 'learn.db'}")
    validation = get_benchmark("calc").problems("validation")
    before = sampled_success("builtin:tiny", tiny_cache, validation, n=16)
    after = sampled_success(result.final_checkpoint.checkpoint_path, tiny_cache, validation, n=16)
    print(f"validation sampled success: untrained {before:.4f} -> trained {after:.4f}")
    assert after > before * 1.5 and after - before > 0.01
