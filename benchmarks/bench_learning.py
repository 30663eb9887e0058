"""Does the closed loop learn? calc, several seeds, the loop's defaults, one run.

For each seed it runs the default loop (round 0 = mutation search, then policy-steered rounds)
and the same loop with lr = 0, then prints:

(a) test accuracy of the best task-level workflow found by round-0 search;
(b) test accuracy of the per-query policy after the loop, one workflow per problem: greedy, and
    best-of-k (``--best-of``, 32) chosen by ``--selection`` (default ``validated``: among the k
    candidates that run on the test problem, the program most often right on the *validation* split
    when it ran, the split search selects (a) on; ``runs``: the likeliest candidate that runs); the
    candidates are the greedy program and k - 1 samples (``--no-greedy``: k samples). No
    test answer is read. The RESULT line uses best-of-k (``--best-of 1`` makes it greedy);
(c) the same for the lr = 0 loop (its parameters never move: it must match the untrained policy);
(d) evaluations the policy-steered round 1 needs to reach round 0's best validation score, over
    what round 0 needed (both searches use the same seed, so the same validation batches). The
    same ratio of the lr = 0 loop is printed beside it: a policy round differs from a mutation
    round even without learning (other children, other proposers), so only the gap between the two
    is what training bought. The same ratio for the last steered round (the policy trained
    longest) and its control is printed too.

Ends with ``RESULT policy_minus_search=...``, ``RESULT lr0_drift=...``, ``RESULT steered_evals_ratio=...``.
Usage: ``python benchmarks/bench_learning.py [--seeds 0 1 2] [--policy builtin:tiny] [--out DIR]``.

Any other ``--policy`` (a pretrained chat base such as ``builtin:smollm2``) runs the ``smollm2-cpu``
preset (format warm start included) cut to what 2 CPU cores can measure in about an hour
(:data:`SMOL_SETTINGS`, printed), evaluates (a), (b), (c) on the first ``--test-size`` test problems
only, with best-of-``--best-of`` (default 4), and ends with ``RESULT smol_greedy_minus_search=``,
``RESULT smol_trained_minus_lr0=`` and ``RESULT smol_steered_vs_lr0=`` (see :func:`smol_main`).
With ``--out`` every finished loop and evaluation is kept there, so the same command resumes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

from storage.engine import open_db, session_scope
from storage.models import Run, Workflow
from workflow_rl.loop.config import LoopConfig
from workflow_rl.loop.driver import round_run_name, run_loop
from workflow_rl.loop.policy_eval import evaluate_code, evaluate_policy
from workflow_rl.loop.report import evaluations_to_reach, search_curve


def best_workflow(engine, search_run: str) -> tuple[str, float]:
    """Code and validation score of the best node of a search run (earliest on ties)."""
    from search.tree import load_tree

    with session_scope(engine) as s:
        run_id = s.scalar(select(Run.id).where(Run.name == search_run))
        tree = load_tree(s, run_id)
        best = tree.best()
        return s.get(Workflow, tree.workflow_id[best]).code, float(tree.own_score[best] or 0.0)


def steered_ratio(engine, loop: str, round_: int = 1) -> tuple[int | None, int | None, int]:
    """(evals round 0 needed for its best, evals round ``round_`` needed for it, that round's total evals)."""
    with session_scope(engine) as s:
        ids = {r: s.scalar(select(Run.id).where(Run.name == round_run_name(loop, r))) for r in (0, round_)}
        c0, c1 = search_curve(s, ids[0]), search_curve(s, ids[round_])
    best0 = max(score for _, score in c0)
    return evaluations_to_reach(c0, best0), evaluations_to_reach(c1, best0), (c1[-1][0] if c1 else 0)


def ratio_of(need: int | None, total: int, need0: int | None) -> float:
    """(d): evaluations a steered round needed over round 0's (its whole budget where never reached)."""
    return (need if need is not None else total) / max(need0 or 1, 1)


def main() -> None:
    """Run the measurement and print the table and RESULT lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--policy", default="builtin:tiny", help="Starting policy of every loop (default builtin:tiny).")
    parser.add_argument("--out", default=None, help="Directory for the database and checkpoints (default: temp).")
    parser.add_argument("--best-of", type=int, default=None,
                        help="k of best-of-k (b) and (c) (1 = greedy only; default 32, 4 for a pretrained policy).")
    parser.add_argument("--test-size", type=int, default=20,
                        help="Pretrained policy only: test problems (the split's first ones) (a)-(c) are measured on.")
    parser.add_argument("--rounds", type=int, default=None,
                        help="Pretrained policy only: rounds of every loop (default 3); re-running with --out and a "
                             "larger value continues the stored loops.")
    parser.add_argument("--graft-failures", type=int, default=None,
                        help="Pretrained policy only: failures of a node the policy writes programs for in steered "
                             "rounds (LoopConfig.graft_failures; default: the preset's, 20). A new --out is needed: a "
                             "stored loop keeps its own.")
    parser.add_argument("--jobs", type=int, default=1,
                        help="Pretrained policy only: seeds run in this many processes at once, each with "
                             "OMP_NUM_THREADS = cores / jobs and its output in <out>/seed-<s>.log (2 on 2 cores keeps "
                             "both busy through the single-threaded search phases; each process holds up to ~9 GB, in training).")
    parser.add_argument("--selection", default="validated", choices=["validated", "runs", "logprob"],
                        help="How best-of-k chooses (see workflow_rl.loop.policy_eval).")
    parser.add_argument("--with-greedy", action="store_true", default=True,
                        help="Best-of-k's candidates are the greedy program and k - 1 samples (the default, as "
                             "evaluate_policy's), so a sample replaces the greedy program only where --selection "
                             "prefers it.")
    parser.add_argument("--no-greedy", dest="with_greedy", action="store_false",
                        help="Best-of-k draws all k candidates (as the figures recorded before 2026-12-07 did).")
    args = parser.parse_args()
    if args.policy != "builtin:tiny":
        from bench_learning_smol import smol_main

        smol_main(args)
        return
    args.best_of = 32 if args.best_of is None else args.best_of
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-learning-"))
    out.mkdir(parents=True, exist_ok=True)
    db = str(out / "bench.db")
    engine = open_db(db)
    t0 = time.perf_counter()
    k = args.best_of

    def per_query(checkpoint: str, name: str) -> tuple[float, float]:
        """(greedy, best-of-k) test accuracy of a policy."""
        greedy = evaluate_policy(engine, checkpoint, "test", run=f"eval/{name}/test").accuracy
        if k == 1:
            return greedy, greedy
        tag = "-greedy" if args.with_greedy else ""
        return greedy, evaluate_policy(engine, checkpoint, "test", best_of=k, selection=args.selection,
                                       with_greedy=args.with_greedy,
                                       run=f"eval/{name}/test/k{k}-{args.selection}{tag}").accuracy

    untrained_g, untrained = per_query(args.policy, "untrained")
    rows = []
    for seed in args.seeds:
        t = time.perf_counter()
        loop = run_loop(LoopConfig(run=f"loop-s{seed}", seed=seed, policy=args.policy,
                                     out_dir=str(out / f"loop-s{seed}")), engine)
        control = run_loop(LoopConfig(run=f"lr0-s{seed}", seed=seed, lr=0.0, policy=args.policy,
                                      out_dir=str(out / f"lr0-s{seed}")), engine)
        code, val = best_workflow(engine, round_run_name(loop.run, 0))
        a = evaluate_code(engine, code, "test", run=f"eval/r0-best-s{seed}/test").accuracy
        b_g, b = per_query(str(loop.final_checkpoint.checkpoint_id), f"loop-s{seed}")
        c_g, c = per_query(str(control.final_checkpoint.checkpoint_id), f"lr0-s{seed}")
        need0, need1, total1 = steered_ratio(engine, loop.run)
        ratio = ratio_of(need1, total1, need0)
        # The same ratio for the lr = 0 control: how much of (d) the training itself explains.
        c0, c1, ctotal1 = steered_ratio(engine, control.run)
        control_ratio = ratio_of(c1, ctotal1, c0)
        # The last steered round (its policy trained longest), beside its control: (need, total).
        last = LoopConfig.rounds - 1
        later = [steered_ratio(engine, name, last)[1:] for name in (loop.run, control.run)]
        later_ratios = tuple(ratio_of(n, t, need0) for n, t in later)
        rows.append((seed, val, a, b, c, need0, need1, total1, ratio, time.perf_counter() - t, control_ratio, b_g, c_g,
                     later_ratios))
    print(f"calc, seeds {args.seeds}, policy {args.policy}, LoopConfig defaults (rounds={LoopConfig.rounds}, lr={LoopConfig.lr}), "
          f"untrained policy test accuracy {untrained_g:.3f} greedy, {untrained:.3f} best-of-{k} ({args.selection}{' + greedy' if args.with_greedy else ''})")
    print(f"{'seed':>4} {'r0 best val':>11} {'(a) r0 test':>11} {'(b) greedy':>10} {f'(b) k={k}':>9} "
          f"{'(c) greedy':>10} {f'(c) k={k}':>9} "
          f"{'r0 evals':>8} {'r1 evals':>9} {'(d) ratio':>9} {'lr0 ratio':>9} {'last ratio':>10} {'lr0 last':>8} "
          f"{'loop+ctl s':>10}")
    for seed, val, a, b, c, need0, need1, total1, ratio, secs, control_ratio, b_g, c_g, later_ratios in rows:
        r1 = str(need1) if need1 is not None else f">{total1}"
        print(f"{seed:>4} {val:>11.3f} {a:>11.3f} {b_g:>10.3f} {b:>9.3f} {c_g:>10.3f} {c:>9.3f} {need0!s:>8} {r1:>9} {ratio:>9.2f} "
              f"{control_ratio:>9.2f} {later_ratios[0]:>10.2f} {later_ratios[1]:>8.2f} {secs:>10.0f}")
    mean = statistics.fmean
    a_m, b_m, c_m = mean(r[2] for r in rows), mean(r[3] for r in rows), mean(r[4] for r in rows)
    reached = all(r[6] is not None for r in rows)
    bg_m = mean(r[11] for r in rows)
    print(f"mean: (a) {a_m:.3f}  (b) greedy {bg_m:.3f}, best-of-{k} {b_m:.3f}  (c) {c_m:.3f}  untrained {untrained:.3f}; "
          f"steered round reached round 0's best in {sum(r[6] is not None for r in rows)}/{len(rows)} seeds"
          f"{'' if reached else ' (ratio uses the whole round-1 budget where not reached: a lower bound)'}; "
          f"total {time.perf_counter() - t0:.0f}s; data in {out}")
    print(f"steered rounds' ratio (d), mean: round 1 {mean(r[8] for r in rows):.3f} (lr = 0 control "
          f"{mean(r[10] for r in rows):.3f}); round {LoopConfig.rounds - 1} {mean(r[13][0] for r in rows):.3f} "
          f"(control {mean(r[13][1] for r in rows):.3f})")
    print(f"RESULT policy_minus_search={b_m - a_m:.3f}")
    print(f"RESULT policy_greedy_minus_search={bg_m - a_m:.3f}")
    print(f"RESULT lr0_drift={abs(c_m - untrained):.3f}")
    print(f"RESULT steered_evals_ratio={mean(r[8] for r in rows):.3f}")


if __name__ == "__main__":
    main()
