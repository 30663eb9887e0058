"""Evaluations needed to reach a target validation score on calc: MCTS vs random node selection.

Both arms use the same mutation proposer, the same budget, batch, group size and seeds; they
differ only in which node is expanded (``--selection uct`` vs ``--selection random``, a uniformly
drawn node of the tree). For every run we record the evaluation count (workflow x problem
executions, the search's budget unit) at which the best validation score first reached the target.
A run that never reaches it counts as the full budget, which *understates* the random arm's true
cost, so the printed ratio is conservative (an upper bound on MCTS evals / random evals).

    python benchmarks/bench_search.py [--seeds 3] [--budget 6000] [--target 0.45]

Ends with ``RESULT mcts_vs_random_evals=<mean MCTS evals / mean random evals>`` (target <= 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from search.config import SearchConfig
from search.search import SearchProgress
from workflow_rl.loop.search_run import run_search


def evals_to_target(db: str, run: str, config: SearchConfig, target: float, workers: int) -> tuple[int, float, bool]:
    """Run one search; return (evaluations when best >= target or the budget, final best, reached)."""
    hit: list[int] = []

    def on_progress(p: SearchProgress) -> None:
        """Remember the evaluation count when the best score first reaches the target."""
        if not hit and p.best_score >= target - 1e-12:
            hit.append(p.evaluations)

    result = asyncio.run(run_search(db, run, config, workers=workers, on_progress=on_progress))
    reached = bool(hit)
    return (hit[0] if reached else max(config.budget, result.progress.evaluations)), result.progress.best_score, reached


def main() -> None:
    """Run both arms over the seeds and print a side-by-side table and the RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="search seeds per arm (>= 3)")
    parser.add_argument("--budget", type=int, default=6000, help="evaluation budget per run")
    parser.add_argument("--target", type=float, default=0.45, help="validation score to reach (seeds: 0.233)")
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers")
    args = parser.parse_args()
    arms = {"mcts": "uct", "random": "random"}
    rows: dict[str, list[tuple[int, float, bool, float]]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.db")
        for seed in range(args.seeds):
            for arm, selection in arms.items():
                config = SearchConfig(selection=selection, seed=seed, budget=args.budget)
                t0 = time.perf_counter()
                evals, best, reached = evals_to_target(db, f"{arm}-{seed}", config, args.target, args.workers)
                rows[arm].append((evals, best, reached, time.perf_counter() - t0))
                print(f"seed {seed} {arm:6s}: evals to {args.target:.3f} = {evals:5d}"
                      f"{'' if reached else ' (not reached: budget)'}  final best {best:.3f}"
                      f"  ({rows[arm][-1][3]:.1f}s)", flush=True)
    print()
    print(f"{'arm':8s} {'mean evals to target':>22s} {'reached':>8s} {'mean final best':>16s}")
    for arm in arms:
        evals = [r[0] for r in rows[arm]]
        print(f"{arm:8s} {statistics.mean(evals):22.1f} {sum(r[2] for r in rows[arm]):>5d}/{len(evals):<2d}"
              f" {statistics.mean(r[1] for r in rows[arm]):16.3f}")
    ratio = statistics.mean(r[0] for r in rows["mcts"]) / statistics.mean(r[0] for r in rows["random"])
    print(f"RESULT mcts_vs_random_evals={ratio:.3f}")


if __name__ == "__main__":
    main()
