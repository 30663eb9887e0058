"""What each sampler-mismatch IS mode would do to real policy samples: the evidence for the IS default.

Samples ``--samples`` completions for each of ``--problems`` calc train problems with the product's sampler
(``Policy.sample``, the loop's T and max_new_tokens, behavior logprobs recorded), scores them as the trainer
does at the start of a round (``Policy.forward_logprobs``: fp32, and, to stand in for a GPU trainer whose
numerics differ from its sampler's, under CPU bf16 autocast), and reports per IS mode (TRL 1.16's default
``sequence_mask`` at 3.0 and ours, ``token_truncate`` at 2.0, ...) the fraction of sequences and tokens
masked and the mean weight, with the |old - behavior| gap.

Usage: ``python benchmarks/bench_is_modes.py [--policy builtin:tiny --problems 8 --samples 16]``
Ends with ``RESULT <trainer numerics>_<mode>_masked_seq_frac=`` lines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workflow_rl.learner.grpo import completion_mask  # noqa: E402
from workflow_rl.learner.grpo_is import mask_stats, sampler_is_weights  # noqa: E402
from workflow_rl.loop.config import LoopConfig  # noqa: E402
from workflow_rl.policy.model import Policy  # noqa: E402
from workflow_rl.policy.prompts import policy_prompt_for  # noqa: E402
from workflow_rl.tasks import get_benchmark  # noqa: E402

MODES = [("token_truncate", 2.0), ("token_truncate", 3.0), ("token_mask", 3.0), ("sequence_truncate", 3.0),
         ("sequence_mask", 3.0), ("sequence_mask", 2.0)]


def main(argv: list[str] | None = None) -> None:
    """Sample, score in fp32 and bf16, print the table and the RESULT lines."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="builtin:tiny")
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--samples", type=int, default=16, help="completions per problem (the loop's group size)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    loop = LoopConfig()
    bench = get_benchmark("calc")
    policy = Policy.load(args.policy, device="cpu", dtype=torch.float32)
    problems = bench.problems("train")[: args.problems]
    prompts = [policy_prompt_for(bench.description, bench.operator_names, p.text) for p in problems]
    drawn = policy.sample(prompts, n=args.samples, temperature=loop.temperature, max_new_tokens=loop.max_new_tokens,
                          seed=args.seed)
    prompt_ids = [list(d.prompt_token_ids) for d in drawn]
    comp_ids = [list(d.completion_token_ids) for d in drawn]
    lengths = [len(c) for c in comp_ids]
    width = max(lengths)
    mask = completion_mask(lengths, width)
    behavior = torch.tensor([list(d.behavior_logprobs) + [0.0] * (width - len(d.behavior_logprobs)) for d in drawn])
    print(f"{args.policy}: {len(drawn)} samples of {len(problems)} calc train problems, T={loop.temperature}, "
          f"<= {loop.max_new_tokens} new tokens (mean {sum(lengths) / len(lengths):.1f}, "
          f"{sum(d.truncated for d in drawn)} truncated)")
    results = {}
    for numerics in ("fp32", "bf16"):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=numerics == "bf16"):
            chunks = []
            for i in range(0, len(drawn), 32):  # the trainer's micro-batches, padded to the batch width
                logp = policy.forward_logprobs(prompt_ids[i : i + 32], comp_ids[i : i + 32], loop.temperature)[0]
                chunks.append(torch.nn.functional.pad(logp.float(), (0, width - logp.shape[1])))
            old = torch.cat(chunks)
        gap = ((old - behavior).abs() * mask)[mask.bool()]
        seq_sum = ((old - behavior) * mask).sum(-1)
        print(f"\ntrainer {numerics}: |old - behavior| per token mean {gap.mean():.2e} max {gap.max():.2e}; "
              f"|sum over a sequence| mean {seq_sum.abs().mean():.2e} max {seq_sum.abs().max():.2e}")
        print(f"  {'mode':24} {'seq masked':>10} {'tok masked':>10} {'weight mean':>11} {'weight min':>10} "
              f"{'weight max':>10}")
        for mode, cap in MODES:
            w = sampler_is_weights(old, behavior, mask, mode, cap)
            masked_tokens, masked_seqs, n_seqs = mask_stats(w, mask)
            active = w[mask.bool()]
            results[(numerics, mode, cap)] = masked_seqs / n_seqs
            print(f"  {mode + f' @ {cap}':24} {masked_seqs / n_seqs:10.3f} {masked_tokens / mask.sum():10.3f} "
                  f"{active.mean():11.4f} {active.min():10.4f} {active.max():10.4f}")
    for (numerics, mode, cap), frac in results.items():
        print(f"RESULT {numerics}_{mode}_{cap}_masked_seq_frac={frac:.3f}")


if __name__ == "__main__":
    main()
