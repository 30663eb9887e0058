"""``bench_learning.py --policy <pretrained chat base>``: does the closed loop learn on SmolLM2?

The same measurement as for ``builtin:tiny`` (see ``bench_learning.py``), sized for a 135 M
pretrained model on 2 CPU cores, where every forward over calc's ~730-token chat prompt costs
seconds:

- every loop is the ``smollm2-cpu`` preset (LoRA, format warm start, exploration search) with
  :data:`SMOL_SETTINGS` over it (3 rounds: round 0 mutation search, rounds 1-2 policy-steered; a
  search of 400), once trained and once with lr = 0, per seed; ``--rounds N`` runs N rounds instead
  (re-run with ``--out`` and a larger N to continue finished loops: (b) is then measured on the
  checkpoint chosen now, (d) stays round 1's); the lr = 0 control stops after round 1 whatever N is,
  as its later rounds could change neither (c) (the same weights) nor (d); ``--graft-failures M``
  sets ``LoopConfig.graft_failures`` of every loop (how many of a node's failures the policy writes
  programs for in a steered round; ``bench_steering.py`` measures its effect on (d));
- (b) is the trained loop's policy (``LoopResult.policy``): with the preset's ``select_policy``
  ``validation``, the round whose checkpoint wrote the most right greedy programs on the validation
  split (the split (a)'s workflow was chosen on); column ``(b) round`` says which;
- (a), (b) and (c) are measured on the first ``--test-size`` test problems (every one of them on
  the same problems); best-of-k uses ``--best-of`` (default 4) with ``--selection``, its candidates
  the greedy program and k - 1 samples (``--no-greedy``: k samples);
- "the untrained base" is the loop's round-0 policy: the format-warm-started base
  (:mod:`workflow_rl.policy.warm_start`), as ``builtin:tiny``'s untrained policy includes its own
  warm start. The lr = 0 control keeps exactly those weights (its adapter's B stays 0), so its
  best-of-k would repeat the base's draw: only its greedy accuracy is measured, per seed, and
  ``lr0 drift`` printed (it must be 0). The controls run with ``skip_frozen``: their learner saves
  the start weights without the forward/backward passes that lr = 0 makes no-ops (~6 minutes a
  round here), so a control costs its searches and sampling only.

Ends with ``RESULT smol_greedy_minus_search=`` ((b) greedy - (a)), ``RESULT smol_trained_minus_lr0=``
((b) greedy - (c) greedy) and ``RESULT smol_steered_vs_lr0=`` ((d) trained / (d) lr = 0, round 1).
With ``--out``, loops resume from the database and finished evaluations are read from
``<out>/evals.json``, so re-running the same command continues an interrupted run. ``--jobs 2``
runs the seeds in two processes sharing ``--out``, each with one thread, once the untrained base is
evaluated (on 2 cores both stay busy through the single-threaded search phases): SQLite takes their
writes in turn, the evaluations file is merged under a lock, and the parent prints the table from what
they stored. Mind the memory: without the heap bound of commit 4904f4d two such processes held
10-13 GB each and were killed at 24 GB; with it one held ~5 GB outside training and ~9 GB in it. Before the sampler decoded in bounded passes (commit d6ec707) one process reached
~18 GB at times and two were killed at 24 GB; seed 0's third round at 41054f6 peaked at 9.4 GB.
"""

from __future__ import annotations

import fcntl
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_learning as bl

from storage.engine import open_db
from workflow_rl.loop.config import LoopConfig
from workflow_rl.loop.driver import base_policy, round_run_name, run_loop
from workflow_rl.loop.policy_eval import evaluate_code, evaluate_policy
from workflow_rl.tasks import get_benchmark
from workflow_rl.tasks.calc import CalcBenchmark

PRESET = "smollm2-cpu"
SMOL_SETTINGS = dict(rounds=3, search_budget=400, graft_samples=4)
"""Overrides of the preset: 3 rounds (round 1 is the steered search (d) measures; the third raised the
trained policy's greedy test accuracy on 2 of 3 seeds in docs/experiments/2026-12-07-smollm2-round2.md), a search of 400 per
round (the one (a) takes its workflow from; round 1's graft expansions cost ~8 s each) and 4 graft
samples per failing problem. Every other setting is the preset's (workflow_rl/loop/presets.py): its
data and learner settings were chosen on seed 0 pilots of this benchmark whose trained policies were
scored on these same 16 test problems (so the choice was made with them in view; the pilots are in
docs/experiments/2026-12-06-smollm2-explore.md)."""


def run_seeds_apart(args, out: Path) -> None:
    """Run each seed's loops and evaluations in its own process, ``args.jobs`` at a time.

    Each child is this script for one seed with the same ``--out``: they share the database (SQLite
    takes their writes in turn) and the evaluations file (merged under a lock), and split the cores
    (``OMP_NUM_THREADS``). A child that fails is reported with its log; re-running the command resumes.
    """
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in vars(args).items()
             if name not in ("seeds", "jobs", "out", "with_greedy") and value is not None]
    flags += ["--with-greedy" if args.with_greedy else "--no-greedy"]
    pending, running, failed = list(args.seeds), {}, []
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            log = out / f"seed-{seed}.log"
            cmd = [sys.executable, str(Path(__file__).with_name("bench_learning.py")), "--seeds", str(seed),
                   f"--out={out}", "--jobs=1", *flags]
            print(f"seed {seed}: started in its own process ({threads} thread(s)), log {log}", flush=True)
            with open(log, "a") as handle:
                running[seed] = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT,
                                                 env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        time.sleep(5)
        for seed, proc in list(running.items()):
            if proc.poll() is not None:
                del running[seed]
                print(f"seed {seed}: process ended with code {proc.returncode}", flush=True)
                if proc.returncode:
                    failed.append(seed)
    if failed:
        raise SystemExit(f"seeds {failed} failed: see {out}/seed-<s>.log; the same command resumes them")


def smol_main(args) -> None:
    """Run the pretrained-policy measurement (``args`` from ``bench_learning.main``'s parser)."""
    k = args.best_of or 4
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-learning-smol-"))
    out.mkdir(parents=True, exist_ok=True)
    engine = open_db(str(out / "bench.db"))
    cache = out / "evals.json"
    done: dict[str, float] = json.loads(cache.read_text()) if cache.exists() else {}
    t0 = time.perf_counter()
    settings = {**SMOL_SETTINGS, **({"rounds": args.rounds} if args.rounds else {}),
                **({"graft_failures": args.graft_failures} if args.graft_failures else {})}
    test = CalcBenchmark(test_size=args.test_size)  # the first test problems: same ids as full calc's

    def remember(name: str, measure) -> float:
        """An accuracy, measured once per ``--out`` directory."""
        if name not in done:
            value = float(measure())
            # Merge under a lock with what is on disk now: one process per seed may share ``--out``.
            with open(out / "evals.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                done.update(json.loads(cache.read_text()) if cache.exists() else {})
                done[name] = value
                cache.write_text(json.dumps(done, indent=1))
        return done[name]

    def config(seed: int, lr0: bool) -> LoopConfig:
        # A control's passes cannot move a weight, and every round of it has the same weights, so it
        # needs no checkpoint choice either.
        # Its later rounds could change neither (c) (the same weights) nor (d) (round 1's search), so
        # it stops after round 1 whatever ``--rounds`` says.
        extra = {"lr": 0.0, "skip_frozen": True, "select_policy": "last",
                 "rounds": min(settings["rounds"], 2)} if lr0 else {}
        name = f"{'lr0' if lr0 else 'loop'}-s{seed}"
        return LoopConfig.from_preset(PRESET, **{**settings, **extra}, run=name, seed=seed, policy=args.policy,
                                      out_dir=str(out / name))

    def per_query(checkpoint: str, name: str, greedy_only: bool = False) -> tuple[float, float | None]:
        """(greedy, best-of-k) accuracy of a policy on the test problems."""
        tokens = config(0, False).max_new_tokens
        greedy = remember(f"{name}/greedy", lambda: evaluate_policy(
            engine, checkpoint, "test", benchmark=test, max_new_tokens=tokens, run=f"eval/{name}/test").accuracy)
        if greedy_only or k == 1:
            return greedy, None if greedy_only else greedy
        tag = "g" if args.with_greedy else ""  # its own entry: the plain best-of-k stays comparable
        return greedy, remember(f"{name}/k{k}{tag}", lambda: evaluate_policy(
            engine, checkpoint, "test", benchmark=test, best_of=k, selection=args.selection,
            with_greedy=args.with_greedy, max_new_tokens=tokens,
            run=f"eval/{name}/test/k{k}-{args.selection}{'-greedy' if tag else ''}").accuracy)

    start = time.perf_counter()
    base = base_policy(config(0, False), get_benchmark("calc"), print)  # the warm start, cached on disk
    warm_s = time.perf_counter() - start
    untrained_g, untrained = per_query(base, "untrained")
    print(f"untrained base {base}: greedy {untrained_g:.3f}, best-of-{k} {untrained:.3f}", flush=True)
    if args.jobs > 1 and len(args.seeds) > 1:
        run_seeds_apart(args, out)  # the loop below then reads every loop and evaluation back
        done.update(json.loads(cache.read_text()))  # the children's evaluations, or they would run again
    rows = []
    for seed in args.seeds:
        t = time.perf_counter()
        loop = run_loop(config(seed, False), engine)
        control = run_loop(config(seed, True), engine)
        code, val = bl.best_workflow(engine, round_run_name(loop.run, 0))
        a = remember(f"r0-best-s{seed}", lambda code=code, seed=seed: evaluate_code(
            engine, code, "test", benchmark=test, run=f"eval/r0-best-s{seed}/test").accuracy)
        chosen = loop.policy  # the preset's select_policy: the round with the best greedy validation
        # named by checkpoint: a run continued with more --rounds measures the policy it now chooses
        b_g, b = per_query(str(chosen.checkpoint_id), f"loop-s{seed}-c{chosen.checkpoint_id}")
        last = control.final_checkpoint.checkpoint_id
        c_g, _ = per_query(str(last), f"lr0-s{seed}-c{last}", greedy_only=True)
        need0, need1, total1 = bl.steered_ratio(engine, loop.run)
        c0, c1, ctotal1 = bl.steered_ratio(engine, control.run)
        rows.append(dict(seed=seed, val=val, a=a, b_g=b_g, b=b, c_g=c_g, policy_round=chosen.round,
                         policy_val=[info.policy_validation for info in loop.rounds], need0=need0, need1=need1, total1=total1,
                         ratio=bl.ratio_of(need1, total1, need0), c_need1=c1, c_total1=ctotal1,
                         control_ratio=bl.ratio_of(c1, ctotal1, c0), secs=time.perf_counter() - t))
        print(f"seed {seed} done: {rows[-1]}", flush=True)  # a partial log still has every finished seed
    shown = ", ".join(f"{key}={value}" for key, value in {
        **settings, "graft_failures": config(0, False).graft_failures, "lr": config(0, False).lr}.items())
    print(f"calc, seeds {args.seeds}, policy {args.policy}, preset {PRESET} + {shown}; test = first "
          f"{args.test_size} test problems; untrained (format-warm-started) base {base} "
          f"(ready after {warm_s:.0f}s here: the warm start if it was built now, else finding it in the cache): test accuracy {untrained_g:.3f} greedy, "
          f"{untrained:.3f} best-of-{k} ({args.selection}{' + greedy' if args.with_greedy else ''})")
    print(f"{'seed':>4} {'r0 best val':>11} {'(a) r0 test':>11} {'(b) round':>9} {'(b) greedy':>10} {f'(b) k={k}':>9} "
          f"{'(c) greedy':>10} {'r0 evals':>8} {'r1 evals':>9} {'(d) ratio':>9} {'lr0 r1':>7} {'lr0 ratio':>9} "
          f"{'loop+ctl s':>10}")
    for r in rows:
        r1 = str(r["need1"]) if r["need1"] is not None else f">{r['total1']}"
        c1 = str(r["c_need1"]) if r["c_need1"] is not None else f">{r['c_total1']}"
        print(f"{r['seed']:>4} {r['val']:>11.3f} {r['a']:>11.3f} {'r' + str(r['policy_round']):>9} {r['b_g']:>10.3f} {r['b']:>9.3f} {r['c_g']:>10.3f} "
              f"{r['need0']!s:>8} {r1:>9} {r['ratio']:>9.2f} {c1:>7} {r['control_ratio']:>9.2f} {r['secs']:>10.0f}")
    mean = statistics.fmean
    a_m, bg_m, b_m, cg_m = (mean(r[key] for r in rows) for key in ("a", "b_g", "b", "c_g"))
    d_m, dc_m = mean(r["ratio"] for r in rows), mean(r["control_ratio"] for r in rows)
    print(f"mean: (a) {a_m:.3f}  (b) greedy {bg_m:.3f}, best-of-{k} {b_m:.3f}  (c) greedy {cg_m:.3f}  "
          f"untrained greedy {untrained_g:.3f} (lr0 drift {abs(cg_m - untrained_g):.3f}); (d) round 1 {d_m:.3f} "
          f"(lr = 0 control {dc_m:.3f}); total {time.perf_counter() - t0:.0f}s; data in {out}")
    print(f"RESULT smol_greedy_minus_search={bg_m - a_m:.3f}")
    print(f"RESULT smol_trained_minus_lr0={bg_m - cg_m:.3f}")
    print(f"RESULT smol_steered_vs_lr0={d_m / dc_m if dc_m else float('inf'):.3f}")
