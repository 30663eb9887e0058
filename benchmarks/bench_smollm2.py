"""SmolLM2-135M-Instruct as the policy: sampling and training tokens/s, ours vs plain transformers.

Prompts are the real chat prompts of calc problems (:meth:`Policy.prompt`), one group of
``--group`` samples per prompt (GRPO's shape: many completions of one long prompt).

- Sampling: :meth:`Policy.sample` (one prefill per group, KV cache copied to the rows, lean decode
  steps, then one teacher-forced pass per group that records the behaviour logprobs as the learner
  computes them) vs ``model.generate`` on the same prompts repeated ``group`` times
  (``do_sample=True``, ``output_logits=True`` so it also yields the logprobs RL needs). Tokens =
  completion tokens drawn (EOS included, nothing after it). The cost of the teacher-forced pass is
  measured too: the same sampling with the decode steps' own logprobs (``teacher_forced=False``,
  whose max |behaviour - old| on SmolLM2 was 2.3e-5 instead of 0).
- Training: forward + backward of the summed completion logprobs of the sampled completions,
  :meth:`Policy.forward_logprobs` vs a plain full forward over ``prompt + completion`` with
  ``log_softmax`` over every position and a gather; the same LoRA adapter (the default for a
  pretrained base) in both. Tokens = completion tokens trained. The plain path runs
  ``--plain-micro-batch`` rows per forward (gradients accumulated): all rows at once do not fit in
  memory; ours takes the whole group in one call (its rows share one prompt pass). Its logprobs of
  the sampled tokens are compared with their behaviour logprobs (``smol_old_behavior_abs_max``:
  the learner's ``old`` and the sampler's record, which should agree to < 1e-5).

With ``--repeats N`` each pair is measured N times, alternating, and the best of each is kept (on
a shared machine the load drifts between two measurements of a minute or more).

    python benchmarks/bench_smollm2.py [--problems 1 --group 16 --max-new-tokens 32 --ops all]

``--ops`` limits the operators in the prompt (comma-separated; ``all`` = calc's, ~1650 tokens).
Ends with ``RESULT smol_sample_speedup=...`` and ``RESULT smol_train_speedup=...`` (targets >= 2, >= 1.5).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from operators.validate import validation_error  # noqa: E402
from workflow_rl.policy.decode import sample_tokens  # noqa: E402
from workflow_rl.policy.model import LoraSpec, Policy  # noqa: E402
from workflow_rl.policy.prompts import PromptSpec  # noqa: E402
from workflow_rl.tasks import get_benchmark  # noqa: E402


def sample_ours(policy: Policy, prompts: list[str], group: int, max_new: int) -> tuple[float, list]:
    """Seconds and samples of :meth:`Policy.sample`."""
    t0 = time.perf_counter()
    samples = policy.sample(prompts, n=group, temperature=1.0, max_new_tokens=max_new, seed=0)
    return time.perf_counter() - t0, samples


def sample_decode_logprobs(policy: Policy, prompts: list[str], group: int, max_new: int) -> tuple[float, int]:
    """Seconds and completion tokens of the same sampling with the decode steps' logprobs kept
    (no teacher-forced pass): the difference to :func:`sample_ours` is what that pass costs."""
    policy.model.eval()
    t0 = time.perf_counter()
    drawn = sample_tokens(policy.model, [policy.encode(p) for p in prompts], group, 1.0, 1.0, max_new,
                          policy.eos_token_id, 0, teacher_forced=False)
    return time.perf_counter() - t0, sum(len(t) for t in drawn.tokens)


def sample_generate(policy: Policy, prompts: list[str], group: int, max_new: int) -> tuple[float, int]:
    """Seconds and completion tokens of ``model.generate`` on each prompt repeated ``group`` times."""
    model, eos = policy.model, policy.eos_token_id
    seconds, tokens = 0.0, 0
    for text in prompts:
        ids = torch.tensor([policy.encode(text)] * group)
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                             top_p=1.0, top_k=0, max_new_tokens=max_new, eos_token_id=eos, pad_token_id=eos,
                             output_logits=True, return_dict_in_generate=True)
        new = out.sequences[:, ids.shape[1]:]
        logp = torch.stack(out.logits, 1).float().log_softmax(-1).gather(-1, new[..., None]).squeeze(-1)
        seconds += time.perf_counter() - t0
        del logp
        done = (new == eos).long().cumsum(1)
        tokens += int(((done == 0) | ((done == 1) & (new == eos))).sum())
    return seconds, tokens


def train_ours(policy: Policy, samples) -> tuple[float, float]:
    """Seconds of one forward + backward through :meth:`Policy.forward_logprobs`, and the max
    |forward logprob - behaviour logprob| over the sampled tokens."""
    policy.model.train()
    t0 = time.perf_counter()
    logp, lengths = policy.forward_logprobs([list(s.prompt_token_ids) for s in samples],
                                            [list(s.completion_token_ids) for s in samples], 1.0)
    mask = torch.arange(logp.shape[1])[None] < lengths[:, None]
    (logp * mask).sum().backward()
    seconds = time.perf_counter() - t0
    policy.model.zero_grad(set_to_none=True)
    policy.model.eval()
    gap = max((abs(a - b) for s, row in zip(samples, logp.detach().tolist(), strict=True)
               for a, b in zip(s.behavior_logprobs, row, strict=False)), default=0.0)
    return seconds, gap


def train_plain(policy: Policy, samples, micro: int) -> float:
    """Seconds of plain forwards (all positions' logits) + log_softmax + backward, ``micro`` rows at a time.

    Gradients accumulate over the micro-batches, as a plain trainer must do: all 16 rows of a
    ~700-token prompt in one pass hold ~20 GB of activations and logits (the first version of this
    script did that and was OOM-killed on a 23 GB machine).
    """
    policy.model.train()
    eos = policy.eos_token_id
    seconds = 0.0
    for lo in range(0, len(samples), micro):
        chunk = samples[lo: lo + micro]
        seqs = [list(s.prompt_token_ids) + list(s.completion_token_ids) for s in chunk]
        width = max(len(x) for x in seqs)
        ids = torch.tensor([x + [eos] * (width - len(x)) for x in seqs])
        attn = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in seqs])
        t0 = time.perf_counter()
        logits = policy.model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        mask = torch.zeros_like(logp)
        for b, s in enumerate(chunk):
            start = len(s.prompt_token_ids) - 1
            mask[b, start: start + len(s.completion_token_ids)] = 1
        (logp * mask).sum().backward()
        seconds += time.perf_counter() - t0
        del logits, logp
    policy.model.zero_grad(set_to_none=True)
    policy.model.eval()
    return seconds


def add_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The measurement's options (``prefix`` names them in another benchmark's parser, e.g. ``smol-``)."""
    parser.add_argument(f"--{prefix}problems", type=int, default=1, help="prompt groups")
    parser.add_argument(f"--{prefix}group", type=int, default=16, help="samples per prompt")
    parser.add_argument(f"--{prefix}max-new-tokens", type=int, default=32)
    parser.add_argument(f"--{prefix}ops", default="all")
    parser.add_argument(f"--{prefix}plain-micro-batch", type=int, default=4,
                        help="rows per plain forward (gradients accumulate; ~5 GB at 4 x 750 tokens)")
    parser.add_argument(f"--{prefix}repeats", type=int, default=1,
                        help="alternate the measurements this many times and keep the best of each")


def measure(problems: int = 1, group: int = 16, max_new_tokens: int = 32, ops: str = "all",
            plain_micro_batch: int = 4, repeats: int = 1, train: bool = True) -> dict[str, float]:
    """Run the measurements (progress printed as they go); the ``RESULT`` values by name, in print order."""
    torch.manual_seed(0)
    bench = get_benchmark("calc")
    spec = PromptSpec.of(bench)
    if ops != "all":
        spec = PromptSpec(spec.task_description, tuple(ops.split(",")), spec.example)
    policy = Policy.load("builtin:smollm2", lora=LoraSpec())
    prompts = [policy.prompt(spec, p.text) for p in bench.problems("train")[:problems]]
    print(f"threads {torch.get_num_threads()}, prompt tokens {[len(policy.encode(p)) for p in prompts]}, "
          f"group {group}, max_new_tokens {max_new_tokens}, plain micro-batch {plain_micro_batch}", flush=True)
    gen_rate = ours_rate = decode_rate = 0.0
    plain_s = train_s = float("inf")
    gap = float("nan")
    for rep in range(repeats):  # alternated, best of each: the load of a shared machine drifts
        gen_s, gen_tokens = sample_generate(policy, prompts, group, max_new_tokens)
        ours_s, samples = sample_ours(policy, prompts, group, max_new_tokens)
        ours_tokens = sum(len(s.completion_token_ids) for s in samples)
        dec_s, dec_tokens = sample_decode_logprobs(policy, prompts, group, max_new_tokens)
        gen_rate, ours_rate = max(gen_rate, gen_tokens / gen_s), max(ours_rate, ours_tokens / ours_s)
        decode_rate = max(decode_rate, dec_tokens / dec_s)
        print(f"[{rep}] sampling  ours     {ours_tokens:5d} tokens {ours_s:7.1f} s  {ours_tokens / ours_s:7.1f} tok/s",
              flush=True)
        print(f"[{rep}] sampling  ours without the teacher-forced logprob pass {dec_tokens:5d} tokens {dec_s:7.1f} s  "
              f"{dec_tokens / dec_s:7.1f} tok/s", flush=True)
        print(f"[{rep}] sampling  generate {gen_tokens:5d} tokens {gen_s:7.1f} s  {gen_tokens / gen_s:7.1f} tok/s",
              flush=True)
    valid = sum(validation_error(s.program, spec.operator_names) is None for s in samples)
    print(f"valid programs among the sampled replies (T = 1, untrained base): {valid}/{len(samples)}", flush=True)
    for rep in range(repeats if train else 0):
        plain = train_plain(policy, samples, plain_micro_batch)
        ours, gap = train_ours(policy, samples)
        plain_s, train_s = min(plain_s, plain), min(train_s, ours)
        print(f"[{rep}] training  ours     {ours_tokens:5d} tokens {ours:7.1f} s  {ours_tokens / ours:7.1f} tok/s",
              flush=True)
        print(f"[{rep}] training  plain    {ours_tokens:5d} tokens {plain:7.1f} s  {ours_tokens / plain:7.1f} tok/s",
              flush=True)
    results = {"smol_sample_tokens_per_s": round(ours_rate, 1), "smol_generate_tokens_per_s": round(gen_rate, 1),
               "smol_sample_decode_logprobs_tokens_per_s": round(decode_rate, 1),
               "smol_sample_speedup": round(ours_rate / gen_rate, 2)}
    if train:
        results |= {"smol_train_speedup": round(plain_s / train_s, 2), "smol_old_behavior_abs_max": float(f"{gap:.3g}")}
    return results | {"smol_valid_program_rate": round(valid / len(samples), 3)}


def main() -> None:
    """Run both measurements and print the table and RESULT lines."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--no-train", action="store_true", help="sampling only (no smol_train_speedup line)")
    args = parser.parse_args()
    results = measure(args.problems, args.group, args.max_new_tokens, args.ops, args.plain_micro_batch, args.repeats,
                      train=not args.no_train)
    for name, value in results.items():
        print(f"RESULT {name}={value}")


if __name__ == "__main__":
    main()
