"""Does showing the graft policy more of a node's failures make the steered search learn-driven?

``bench_learning.py --policy builtin:smollm2`` measures (d): evaluations round 1's steered search
needs to reach round 0's best, over its lr = 0 control's. There the policy writes programs for 6 of
an expanded node's failures (the search's sample, ``max_failures``), so even a policy that solves
many failing problems adds a branch or two per child. This benchmark re-runs each stored loop's
round-1 search from the same round-0 checkpoint with ``graft_failures = N`` (``LoopConfig``: the
policy writes programs for up to N of the node's failures, the search's sample first; the mutations
keep seeing the sample), for the trained loop and its lr = 0 control side by side, everything else
as stored (seed, budget, preset). (At commit 8cbcd62, N was shown to every proposer of the round,
mutations included.)

Reads the loops of a ``bench_learning.py --policy ... --out DIR`` run (their round 0 must be
finished) and writes the new searches (runs ``steer-f<N>/<loop>``) into a copy of its database,
``<work>/bench.db``, so a benchmark still running in DIR is never touched; re-running resumes.
``N`` equal to the loops' own value (6) re-runs their round 1, which checks the harness: the curve
should be the stored one up to the thread count's rounding.

Ends with ``RESULT steer_f<N>_vs_lr0=`` (mean trained ratio over mean control ratio, the same
formula as ``smol_steered_vs_lr0``) per N.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import statistics
import time
from pathlib import Path

import bench_learning as bl
from sqlalchemy import select

from storage.engine import open_db, session_scope
from storage.models import Run
from workflow_rl.loop.config import LoopConfig
from workflow_rl.loop.driver import bench_info, round_run_name, round_search
from workflow_rl.loop.evaluation import BenchmarkEvaluator
from workflow_rl.loop.report import evaluations_to_reach, search_curve
from workflow_rl.loop.state import LoopState
from workflow_rl.policy.model import Policy
from workflow_rl.tasks import get_benchmark
from workflow_rl.tasks.base import answer_check


def stored_loop(engine, name: str) -> tuple[LoopConfig, LoopState]:
    """A stored loop's config and state."""
    with session_scope(engine) as s:
        run = s.scalar(select(Run).where(Run.name == name))
        if run is None:
            raise SystemExit(f"no loop {name!r} in the database: run bench_learning.py --policy ... --out first")
        return LoopConfig(**run.config), LoopState.from_json(run.state)


def steer(engine, loop: str, failures: int) -> tuple[str, float, int]:
    """Run (or resume) ``loop``'s round-1 search with ``graft_failures = failures``; (run name, seconds, evals)."""
    config, state = stored_loop(engine, loop)
    first = state.rounds.get(0)
    if first is None or first.phase != "done":
        raise SystemExit(f"loop {loop!r} has not finished round 0")
    config = dataclasses.replace(config, graft_failures=failures)
    bench = get_benchmark(config.benchmark)
    name = f"steer-f{failures}/{loop}"

    async def go():
        policy = Policy.load(first.checkpoint_path, cache_dir=config.cache_dir)
        async with BenchmarkEvaluator(engine, bench, None, config.workers) as evaluator:
            return await round_search(engine, config, bench_info(bench), evaluator, policy, first.checkpoint_id, 1,
                                      "graft", answer_check(bench), run_name=name)

    t = time.perf_counter()
    result = asyncio.run(go())
    return name, time.perf_counter() - t, result.progress.evaluations


def main() -> None:
    """Re-run the stored loops' round-1 searches per N and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="The bench_learning.py --policy ... --out directory.")
    parser.add_argument("--work", required=True, help="Directory for the copy of its database and the new searches.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--graft-failures", type=int, nargs="+", default=[20],
                        help="Values of N to run (each a search per loop and control).")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "bench.db").exists():
        shutil.copy(Path(args.out) / "bench.db", work / "bench.db")
    engine = open_db(str(work / "bench.db"))
    rows = []
    for failures in args.graft_failures:
        for seed in args.seeds:
            for arm in ("loop", "lr0"):
                loop = f"{arm}-s{seed}"
                name, secs, evals = steer(engine, loop, failures)
                with session_scope(engine) as s:
                    ids = {n: s.scalar(select(Run.id).where(Run.name == n))
                           for n in (round_run_name(loop, 0), round_run_name(loop, 1), name)}
                    c0, stored, c1 = (search_curve(s, ids[n]) for n in ids)
                best0 = max(score for _, score in c0)
                need0, need1 = evaluations_to_reach(c0, best0), evaluations_to_reach(c1, best0)
                was = evaluations_to_reach(stored, best0)
                rows.append(dict(failures=failures, seed=seed, arm=arm, best0=best0, need0=need0, need1=need1,
                                 total=evals, best1=max(score for _, score in c1), stored=was,
                                 stored_total=stored[-1][0] if stored else 0,
                                 ratio=bl.ratio_of(need1, evals, need0), secs=secs))
                r = rows[-1]
                print(f"N={failures} {loop}: r0 best {best0:.3f} after {need0} evals; steered best {r['best1']:.3f}, "
                      f"reached r0's best after {need1 if need1 is not None else f'>{evals}'} evals "
                      f"(stored round 1 with N=6: {was if was is not None else '>' + str(r['stored_total'])}); "
                      f"ratio {r['ratio']:.2f}; {secs:.0f}s", flush=True)
    print(f"{'N':>3} {'seed':>4} {'arm':>4} {'r0 best':>7} {'r0 evals':>8} {'steered':>8} {'best':>5} {'ratio':>6} "
          f"{'stored N=6':>10} {'secs':>5}")
    for r in rows:
        need1 = str(r["need1"]) if r["need1"] is not None else f">{r['total']}"
        was = str(r["stored"]) if r["stored"] is not None else f">{r['stored_total']}"
        print(f"{r['failures']:>3} {r['seed']:>4} {r['arm']:>4} {r['best0']:>7.3f} {r['need0']!s:>8} {need1:>8} "
              f"{r['best1']:>5.2f} {r['ratio']:>6.2f} {was:>10} {r['secs']:>5.0f}")
    for failures in args.graft_failures:
        mine = [r for r in rows if r["failures"] == failures]
        trained = statistics.fmean(r["ratio"] for r in mine if r["arm"] == "loop")
        control = statistics.fmean(r["ratio"] for r in mine if r["arm"] == "lr0")
        print(f"N={failures}: mean ratio trained {trained:.3f}, lr = 0 control {control:.3f}")
        print(f"RESULT steer_f{failures}_vs_lr0={trained / control:.3f}")


if __name__ == "__main__":
    main()
