"""Our GRPO learner against TRL's ``GRPOTrainer``, side by side, on the built-in tiny policy.

TRL is a benchmark-only dependency (``pip install -e .[bench]``); the product never imports it.

1. **Parity** on identical fixed completions for every objective mode of ``trl_parity.modes()`` (TRL
   1.16's defaults, ours, every loss type, IS mode and masking option): TRL's own scoring
   (``_generate_and_score_completions``) and ``compute_loss`` against our loss path
   (``Policy.forward_logprobs`` + ``workflow_rl.learner.grpo``/``grpo_is``, and the trainer's own ``grpo_step``);
   max |loss diff| and max |grad diff| over every parameter.
2. **GRPO steps per second** end to end (sample G completions for each of B prompts, reward,
   one update) with the same tiny model, prompts, reward, G, completion length and temperature, at
   two objective settings: **TRL's defaults** (dapo, eps 0.2/0.2, beta 0, bias-corrected KL, IS
   ``sequence_mask`` at 3.0, which only our learner can apply: TRL has sampler logprobs only with
   vLLM) and **ours** (our ``TrainConfig`` defaults with beta = 0.04, so the reference pass and the
   KL are timed too). Each repeat runs each learner in its own fresh subprocess (alternating, so
   load drifts hit both); medians over repeats.
3. **Peak memory** of those subprocesses: ``VmHWM`` (whole-process high-water RSS, imports
   included) and the RSS growth during the timed steps (sampled every 2 ms), both reported.

Usage: ``python benchmarks/bench_vs_trl.py [--prompts 4 --group 4 --completion-len 24 --steps 5 --repeats 3]``
Ends with ``RESULT parity_max_abs=`` (max over all modes), ``RESULT speedup_vs_trl=`` (our steps/s over
TRL's) and ``RESULT memory_vs_trl=`` (our peak RSS over TRL's), both at TRL's defaults; the same at our
settings are printed before them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):  # run as a script, or loaded by path from a test
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from trl_parity import ParityCase, modes, our_default_mode, our_options, parity, trl_grpo_config  # noqa: E402

from workflow_rl.learner import grpo  # noqa: E402
from workflow_rl.policy.model import Policy  # noqa: E402
from workflow_rl.policy.prompts import render_policy_prompt  # noqa: E402

# ---------------------------------------------------------------- 2/3. steps per second and memory


@dataclass(frozen=True)
class StepCase:
    """One end-to-end GRPO setting, identical for both learners."""

    n_prompts: int = 4  # B prompts per step
    group_size: int = 4  # G completions per prompt
    completion_len: int = 24  # max new tokens
    temperature: float = 1.0
    mode: dict[str, Any] = field(default_factory=lambda: {"beta": 0.0})  # the objective, TRL option names
    lr: float = 1e-5
    threads: int = 1  # torch intra-op threads in both workers (1: the shared 2-core box thrashes at 2)
    steps: int = 5  # timed steps per repeat (after one untimed warm-up step)
    seed: int = 0


def step_prompts(case: StepCase) -> list[str]:
    """Policy prompts (the product's template) for ``(1 + steps) * n_prompts`` arithmetic problems."""
    n = (1 + case.steps) * case.n_prompts
    return [render_policy_prompt("Solve the arithmetic problem; return the number.",
                                 "- ops.calculate(expression): evaluate an arithmetic expression",
                                 f"What is {7 * i + 3} + {11 * i + 5}?") for i in range(n)]


def step_reward(completion: str) -> float:
    """The shared reward: a deterministic function of the completion text only (in [0, 1])."""
    return sum(ch in "()=:" for ch in completion) / max(len(completion), 1)


class RssSampler:
    """Samples this process's resident set size every ``interval`` seconds in a daemon thread.

    RSS (from ``/proc/self/statm``) counts torch's CPU tensors, which ``tracemalloc`` does not see.
    """

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        """Current RSS in bytes."""
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.baseline = self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def peak_rss() -> int:
    """This process image's high-water RSS in bytes (``VmHWM``).

    Not ``getrusage().ru_maxrss``: Linux carries the parent's RSS across fork + exec into it, so a
    worker spawned by a 550 MiB parent would report at least 550 MiB whatever it used.
    """
    with open("/proc/self/status") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    return kib * 1024


def run_trl(case: StepCase, model_dir: str) -> dict[str, float]:
    """Warm-up + ``case.steps`` timed ``GRPOTrainer`` steps; seconds per step and tokens."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    class Timer(TrainerCallback):
        """Wall time of each optimizer step (generation, reward, ref/loss passes, update)."""

        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.t0)

    parity_like = ParityCase(n_prompts=case.n_prompts, group_size=case.group_size, completion_len=case.completion_len,
                             temperature=case.temperature)
    out_dir = tempfile.mkdtemp(prefix="bench-trl-")
    args = trl_grpo_config(out_dir, parity_like, case.mode, learning_rate=case.lr, max_steps=1 + case.steps,
                           seed=case.seed, logging_steps=1, shuffle_dataset=False)
    timer = Timer()
    trainer = GRPOTrainer(
        model=model_dir, reward_funcs=lambda completions, **_: [step_reward(c) for c in completions], args=args,
        train_dataset=Dataset.from_dict({"prompt": step_prompts(case)}),
        processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[timer],
    )
    with RssSampler() as rss:
        trainer.train()
    shutil.rmtree(out_dir, ignore_errors=True)
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {"step_s": timer.times[1:], "mean_completion_len": statistics.mean(lengths[1:]),
            "rss_start": rss.baseline, "rss_peak_steps": rss.peak}


def run_ours(case: StepCase, model_dir: str) -> dict[str, float]:
    """Warm-up + ``case.steps`` timed steps of ours: ``Policy.sample`` (G per prompt, behavior
    logprobs recorded), reward, group advantages, one ``trainer.grpo_step`` (ref pass if beta > 0, IS, update)."""
    from accelerate import Accelerator

    from workflow_rl.learner.config import TrainConfig
    from workflow_rl.learner.dataset import Sample
    from workflow_rl.learner.trainer import adamw, grpo_step

    n = case.n_prompts * case.group_size
    config = TrainConfig(run="bench", lr=case.lr, batch_size=n, micro_batch_size=n, seed=case.seed,
                         **our_options(case.mode))
    accelerator = Accelerator(cpu=True)
    policy = Policy.load(model_dir, device="cpu", dtype=torch.float32)
    ref_model = None  # as trainer.train: a frozen copy only when beta > 0 (no LoRA here)
    if config.beta > 0:
        ref_model = copy.deepcopy(policy.model).eval().requires_grad_(False)
    optimizer = adamw([p for p in policy.model.parameters() if p.requires_grad], config.lr)  # as trainer.train
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    policy.model, optimizer, scheduler = accelerator.prepare(policy.model, optimizer, scheduler)
    prompts = step_prompts(case)
    times, lengths = [], []
    with RssSampler() as rss:
        for k in range(1 + case.steps):
            t0 = time.perf_counter()
            drawn = policy.sample(prompts[k * case.n_prompts : (k + 1) * case.n_prompts], n=case.group_size,
                                  temperature=case.temperature, max_new_tokens=case.completion_len, seed=case.seed + k)
            samples = [Sample(prompt=prompts[k * case.n_prompts + d.prompt_index], completion=d.text,
                              reward=step_reward(d.text), group_id=str(d.prompt_index), source="policy",
                              workflow_id=0, problem_id=0, prompt_token_ids=d.prompt_token_ids,
                              completion_token_ids=d.completion_token_ids, behavior_logprobs=d.behavior_logprobs,
                              policy_version=None, temperature=d.temperature, truncated=d.truncated)
                       for d in drawn]
            advantages = grpo.group_advantages(torch.tensor([s.reward for s in samples]),
                                               [s.group_id for s in samples], config.adv_scale, config.adv_eps)
            grpo_step(policy, accelerator, optimizer, scheduler, samples, advantages, list(range(n)), config,
                      None, ref_model)
            times.append(time.perf_counter() - t0)
            lengths.append(statistics.mean(len(s.completion_token_ids) for s in samples))
    return {"step_s": times[1:], "mean_completion_len": statistics.mean(lengths[1:]),
            "rss_start": rss.baseline, "rss_peak_steps": rss.peak}


def worker(name: str, case: StepCase, model_dir: str) -> None:
    """Subprocess entry: run one learner, print one JSON line with times and memory."""
    torch.set_num_threads(case.threads)
    torch.manual_seed(case.seed)
    result = (run_trl if name == "trl" else run_ours)(case, model_dir)
    result["peak_rss"] = peak_rss()
    print("WORKER " + json.dumps(result), flush=True)


def spawn(name: str, case: StepCase, model_dir: str) -> dict:
    """Run :func:`worker` in a fresh interpreter (clean memory high-water mark) and parse its line."""
    cmd = [sys.executable, __file__, "--worker", name, "--model-dir", model_dir, "--case", json.dumps(asdict(case))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("WORKER ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{name} worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("WORKER "):])


def _mib(n: float) -> str:
    return f"{n / 2**20:8.1f}"


def main(argv: list[str] | None = None) -> None:
    """Parity table, then side-by-side steps/s and memory, then the RESULT lines."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=4, help="B prompts per step")
    ap.add_argument("--group", type=int, default=4, help="G completions per prompt")
    ap.add_argument("--completion-len", type=int, default=24, help="max new tokens per completion")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per repeat (after 1 warm-up)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh-process runs per learner (>= 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in both workers")
    ap.add_argument("--cache-dir", default=None, help="passed to Policy.load (not used today: builtin:tiny ships inside the package)")
    ap.add_argument("--worker", choices=["trl", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, StepCase(**json.loads(args.case)), args.model_dir)
        return
    import trl  # noqa: F401  (fail early, with the install hint, before any work)

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), trl {trl.__version__}")
    policy = Policy.load("builtin:tiny", cache_dir=args.cache_dir, device="cpu", dtype=torch.float32)
    print("\n1. parity on fixed completions, max |ours - TRL| (TRL: its scoring of the completions and "
          "GRPOTrainer.compute_loss; ours: the grpo maths, and the trainer's real grpo_step with its reference pass); "
          f"beta={ParityCase().beta} unless the mode sets it")
    print(f"{'mode (TRL option names)':38} {'loss':>9} {'|d loss|':>9} {'|d grad|':>9} {'|d grad|':>9} "
          f"{'max grad':>8} {'|d adv|':>8} {'r<1-eps':>7} {'r>1+eps':>7} {'IS seq':>6} {'OPM seq':>7} {'H kept':>6}")
    print(f"{'':38} {'':>9} {'maths':>9} {'maths':>9} {'trainer':>9} {'':>8} {'':>8} {'':>7} {'':>7} "
          f"{'masked':>6} {'masked':>7} {'tokens':>6}")
    worst = 0.0
    rows = [(name, mode, True) for name, mode in modes().items()] + [
        ("trl defaults, search samples", {}, False), ("ours defaults, search samples", modes()["ours defaults"], False)]
    for name, mode, sampler_logprobs in rows:  # search samples: no sampler logprobs (TRL without vLLM)
        p = parity(policy, ParityCase(), mode, sampler_logprobs)
        worst = max(worst, p["loss_abs"], p["grad_abs"], p["trainer_grad_abs"], p["adv_abs"], p["mask_abs"])
        print(f"{name:38} {p['loss']:9.5f} {p['loss_abs']:9.1e} {p['grad_abs']:9.1e} {p['trainer_grad_abs']:9.1e} "
              f"{p['grad_max']:8.4f} {p['adv_abs']:8.1e} {p['ratio_below']:7.2f} {p['ratio_above']:7.2f} "
              f"{p['is/masked_seq_frac']:6.2f} {p['off_policy/masked_seq_frac']:7.2f} "
              f"{p['entropy/kept_token_frac']:6.2f}")

    model_dir = str(policy.base_path)
    settings = {"TRL defaults": {"beta": 0.0}, "ours, beta 0.04": our_default_mode() | {"beta": 0.04}}
    figures = {name: steps_and_memory(StepCase(n_prompts=args.prompts, group_size=args.group,
                                               completion_len=args.completion_len, steps=args.steps,
                                               threads=args.threads, mode=mode), model_dir, args.repeats, k + 2, name)
               for k, (name, mode) in enumerate(settings.items())}
    ours = figures["ours, beta 0.04"]
    print(f"RESULT speedup_vs_trl_ours_settings={ours['speedup']:.3f}")
    print(f"RESULT memory_vs_trl_ours_settings={ours['memory']:.3f}")
    trl = figures["TRL defaults"]
    print(f"RESULT step_memory_growth_vs_trl={trl['growth']:.3f}")
    print(f"RESULT parity_max_abs={worst:.3e}")
    print(f"RESULT speedup_vs_trl={trl['speedup']:.3f}")
    print(f"RESULT memory_vs_trl={trl['memory']:.3f}")


def steps_and_memory(case: StepCase, model_dir: str, repeats: int, section: int, name: str) -> dict[str, float]:
    """Side-by-side steps/s and peak memory at one objective setting; returns the ours/TRL ratios."""
    print(f"\n{section}. end-to-end GRPO steps at {name} ({json.dumps(case.mode)}): B={case.n_prompts} prompts x "
          f"G={case.group_size}, <= {case.completion_len} new tokens, T={case.temperature}, {case.steps} timed steps "
          f"after 1 warm-up, fresh process per run, {case.threads} torch thread(s) each")
    runs: dict[str, list[dict]] = {"trl": [], "ours": []}
    for r in range(max(repeats, 1)):
        for who in (("trl", "ours") if r % 2 == 0 else ("ours", "trl")):  # alternate to share load drift
            res = spawn(who, case, model_dir)
            res["steps_per_s"] = len(res["step_s"]) / sum(res["step_s"])
            runs[who].append(res)
            print(f"  run {r} {who:4}: {res['steps_per_s']:6.2f} steps/s  mean completion "
                  f"{res['mean_completion_len']:5.1f} tok  peak RSS {_mib(res['peak_rss'])} MiB  "
                  f"step RSS growth {_mib(res['rss_peak_steps'] - res['rss_start'])} MiB  load {os.getloadavg()[0]:.2f}")
    med = {k: {f: statistics.median(x[f] for x in v) for f in ("steps_per_s", "mean_completion_len", "peak_rss")}
           | {"growth": statistics.median(x["rss_peak_steps"] - x["rss_start"] for x in v)} for k, v in runs.items()}
    print(f"{'median':8} {'steps/s':>8} {'completion tok':>15} {'peak RSS MiB':>13} {'step growth MiB':>16}")
    for k in ("trl", "ours"):
        m = med[k]
        print(f"{k:8} {m['steps_per_s']:8.2f} {m['mean_completion_len']:15.1f} {_mib(m['peak_rss']):>13} "
              f"{_mib(m['growth']):>16}")
    speedup = med["ours"]["steps_per_s"] / med["trl"]["steps_per_s"]
    paired = statistics.median(o["steps_per_s"] / t["steps_per_s"] for o, t in zip(runs["ours"], runs["trl"], strict=True))
    memory = med["ours"]["peak_rss"] / med["trl"]["peak_rss"]
    growth = med["ours"]["growth"] / max(med["trl"]["growth"], 1)
    print(f"ours/TRL steps/s: ratio of medians {speedup:.3f}; median of back-to-back pairs {paired:.3f}; "
          f"peak RSS (VmHWM: imports, model copies, optimizer, activations) {memory:.3f}; step RSS growth {growth:.3f}; "
          f"load average now {os.getloadavg()[0]:.2f}")
    return {"speedup": speedup, "memory": memory, "growth": growth}


if __name__ == "__main__":
    main()
