"""A ceiling probe, not a method: can the warm-started SmolLM2 learn which of calc's programs fits
which problem, and does that carry over to the held-out test phrasings?

It trains a LoRA adapter (r = 8, the learner's default for a pretrained base) on the warm-started
base of the ``smollm2-cpu`` preset with supervised steps on ``--per-step`` random train problems,
each paired with its recipe's oracle program (``CalcBenchmark.oracle_for``: answers the loop never
sees), fenced as the policy writes it. Every ``--every`` steps the greedy policy writes one program
for the first ``--problems`` test and validation problems; a program counts as right when it is the
oracle program token for token (whitespace aside), so the accuracy printed is a lower bound.

What it tells: how much the policy can learn per-query at all with enough right programs, and how
many supervised steps that takes on 2 CPU cores. The closed loop has to find its right programs
(search branches, its own samples); this probe is handed them.

Usage: ``python benchmarks/probe_oracle_sft.py [--steps 50] [--per-step 8] [--lr 5e-4]``.
Ends with ``RESULT oracle_sft_test=`` and ``RESULT oracle_sft_validation=`` (the last evaluation).
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from workflow_rl.loop.config import LoopConfig
from workflow_rl.policy.model import LoraSpec, Policy
from workflow_rl.policy.prompts import PromptSpec
from workflow_rl.policy.warm_start import WarmStartConfig, warm_started
from workflow_rl.tasks.calc import CalcBenchmark


def main() -> None:
    """Parse the options, train, print the accuracies and the RESULT lines."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=50, help="supervised LoRA steps")
    ap.add_argument("--per-step", type=int, default=8, help="train problems per step (one oracle program each)")
    ap.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate of the adapter")
    ap.add_argument("--every", type=int, default=10, help="evaluate every this many steps")
    ap.add_argument("--problems", type=int, default=16, help="first test / validation problems evaluated")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    bench = CalcBenchmark()
    preset = LoopConfig.from_preset("smollm2-cpu")
    base = warm_started(preset.policy, bench, WarmStartConfig(steps=preset.warm_start))
    policy = Policy.load(str(base), lora=LoraSpec(), device="cpu", dtype=torch.float32)
    spec = PromptSpec.of(bench)
    train = bench.problems("train")
    splits = {s: bench.problems(s)[: args.problems] for s in ("test", "validation")}

    def norm(code: str) -> str:
        return "".join(code.split())

    def accuracy(problems) -> float:
        policy.model.eval()
        drawn = policy.sample([policy.prompt(spec, p.text) for p in problems], 1, 0.0, 1.0, preset.max_new_tokens, 0)
        return sum(norm(d.program) == norm(bench.oracle_for(p)) for d, p in zip(drawn, problems, strict=True)) / len(problems)

    params = [p for p in policy.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    last = {s: accuracy(ps) for s, ps in splits.items()}
    print(f"step 0: test {last['test']:.3f} validation {last['validation']:.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    for step in range(1, args.steps + 1):
        policy.model.train()
        batch = rng.sample(train, args.per_step)
        logp, lengths = policy.forward_logprobs([policy.encode(policy.prompt(spec, p.text)) for p in batch],
                                                [policy.completion_ids(bench.oracle_for(p)) for p in batch], 1.0)
        mask = torch.arange(logp.shape[1])[None] < lengths[:, None]
        loss = -(logp * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0 or step == args.steps:
            last = {s: accuracy(ps) for s, ps in splits.items()}
            print(f"step {step}: loss {loss.item():.3f} test {last['test']:.3f} validation {last['validation']:.3f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
    print(f"RESULT oracle_sft_test={last['test']:.3f}")
    print(f"RESULT oracle_sft_validation={last['validation']:.3f}")


if __name__ == "__main__":
    main()
