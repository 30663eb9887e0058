"""calc-llm with a real local model (SmolLM2-135M): hand-written LLM seeds vs the searched workflow, on test.

For each search seed: ``workflow-rl search`` (through ``run_search``, as the CLI calls it) on calc-llm's
validation split with the mutation proposer and the promotion check; then the best seed workflow and the
best searched workflow, each chosen on validation only, are scored once on the test split (``eval``'s
``evaluate_stored``). The search seeds share the benchmark's problems and one fresh response cache, so
the second seed replays the seed workflows' calls. A behavioural-twin check then evaluates
``answer_generate`` wrapped in an ``if`` whose both branches call it, and counts problems where its
reward differs from the plain seed's (noise would make them differ; identical requests must not).

    python benchmarks/bench_llm_local.py [--executor local|URL#MODEL] [--seeds 2] [--budget 1200] [--max-simulations 30]

``--executor local`` is the product's local executor (llama.cpp's server with the packaged SmolLM2,
started once for the run and stopped at its end). Ends with ``RESULT local_search_minus_seed=<searched -
seed test accuracy, mean over seeds>`` and ``RESULT local_timeouts=<share of evaluations that timed out>``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.config import SearchConfig  # noqa: E402
from search.tree import ROOT_INDEX  # noqa: E402
from storage.engine import open_db, session_scope  # noqa: E402
from storage.models import Evaluation, Workflow  # noqa: E402
from storage.repo import add_workflow  # noqa: E402
from workflow_rl.llm.local_server import stop_shared_servers  # noqa: E402
from workflow_rl.loop.search_run import evaluate_stored, executor_client, run_search  # noqa: E402

TWIN = """async def solve(problem, ops):
    if "?" in problem:
        return await ops.answer_generate(problem)
    else:
        return await ops.answer_generate(problem)
"""


async def twin_check(db: str, run_id: int, seed_wid: int, options: dict[str, str], executor: str) -> tuple[int, int]:
    """(problems where the twin's validation reward differs from the seed's, problems compared)."""
    from workflow_rl.loop.evaluation import BenchmarkEvaluator
    from workflow_rl.tasks.options import build_benchmark

    engine = open_db(db)
    benchmark = build_benchmark("calc-llm", options)
    with session_scope(engine) as session:
        twin_wid = add_workflow(session, run_id, TWIN, "mutation").id
        seed_code = session.get(Workflow, seed_wid).code
    async with BenchmarkEvaluator(engine, benchmark, llm=executor_client(executor), workers=2) as ev:
        ids = ev.problem_ids("validation")
        seed = {r.problem_id: r.reward for r in (await ev.evaluate(run_id, seed_wid, seed_code, ids)).records}
        twin = {r.problem_id: r.reward for r in (await ev.evaluate(run_id, twin_wid, TWIN, ids)).records}
    return sum(seed[p] != twin[p] for p in ids), len(ids)


def promotion_stats(db: str, batch_size: int) -> str:
    """How the promotion check changed the scores of the children it confirmed (from the stored rows).

    A promoted child's first ``batch_size`` validation rows (by row id) are its screening batch, the
    rest its confirmation: the line compares the batch mean with the whole-split mean.
    """
    from storage.models import Problem, SearchNode

    with session_scope(open_db(db)) as session:
        children = session.scalars(select(SearchNode.workflow_id).where(SearchNode.parent_node_id.is_not(None))).all()
        batch_means, full_means = [], []
        for wid in children:
            rewards = session.scalars(select(Evaluation.reward).join(Problem, Problem.id == Evaluation.problem_id)
                                      .where(Evaluation.workflow_id == wid, Problem.split == "validation")
                                      .order_by(Evaluation.id)).all()
            if len(rewards) > batch_size:
                batch_means.append(statistics.mean(rewards[:batch_size]))
                full_means.append(statistics.mean(rewards))
    if not batch_means:
        return "promotions: none"
    lower = sum(f < b for b, f in zip(batch_means, full_means, strict=True))
    return (f"promotions: {len(batch_means)} of {len(children)} children; screening-batch mean "
            f"{statistics.mean(batch_means):.3f} -> whole-split mean {statistics.mean(full_means):.3f} "
            f"({lower} scored lower once confirmed)")


def main() -> None:
    """Run the seeds, print one line per seed, the twin check, totals and the RESULT lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executor", default="local", help="local (default) or URL#MODEL")
    parser.add_argument("--seeds", type=int, default=2, help="search seeds (>= 2)")
    parser.add_argument("--budget", type=int, default=1200, help="evaluation budget per search")
    parser.add_argument("--max-simulations", type=int, default=30, help="expansions per search")
    parser.add_argument("--validation-size", type=int, default=20)
    parser.add_argument("--test-size", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8, help="screening batch (the promotion uses all)")
    parser.add_argument("--children", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64, help="completion tokens per LLM call")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads of a server started here")
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers")
    parser.add_argument("--dir", default=None, help="where the database, cache and server log go (default: temp)")
    args = parser.parse_args()
    options = {"validation_size": str(args.validation_size), "test_size": str(args.test_size),
               "train_size": "20", "max_tokens": str(args.max_tokens)}
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_llm_local_"))
    work.mkdir(parents=True, exist_ok=True)
    db = f"sqlite:///{work / 'bench.db'}"
    os.environ.setdefault("WORKFLOW_RL_LLM_CACHE", str(work / "llm-cache.sqlite"))
    t_all = time.perf_counter()
    rows = []
    # --executor local: the product's local executor starts llama.cpp once for the whole run.
    os.environ.setdefault("WORKFLOW_RL_LOCAL_THREADS", str(args.threads))
    os.environ.setdefault("WORKFLOW_RL_LOCAL_LOG", str(work / "server.log"))
    spec = args.executor
    try:
        print(f"executor {spec} (asked {args.executor}); dir {work}; options {options}", flush=True)
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            config = SearchConfig(benchmark="calc-llm", benchmark_options=options, seed=seed, budget=args.budget,
                                  max_simulations=args.max_simulations, batch_size=args.batch_size,
                                  children=args.children, promote=True)
            result = asyncio.run(run_search(db, f"local-{seed}", config, executor=spec, workers=args.workers))
            t_search = time.perf_counter() - t0
            tree = result.tree
            seeds = tree.children[ROOT_INDEX]
            seed_best = max(seeds, key=lambda i: (tree.own_score[i] or 0.0, -i))
            best = tree.best()
            tests = {}
            for label, index in (("seed", seed_best), ("searched", best)):
                wid = tree.workflow_id[index]
                batch = asyncio.run(evaluate_stored(db, wid, "test", 1, spec, args.workers))
                tests[label] = (wid, tree.own_score[index] or 0.0, batch.mean_reward)
            rows.append((seed, tests, result.progress.evaluations, time.perf_counter() - t0, t_search))
            print(f"seed {seed}: best seed workflow #{tests['seed'][0]} validation {tests['seed'][1]:.3f} test "
                  f"{tests['seed'][2]:.3f} | searched #{tests['searched'][0]} validation {tests['searched'][1]:.3f} "
                  f"test {tests['searched'][2]:.3f} | {result.progress.evaluations} search evaluations, "
                  f"{result.progress.simulations} simulations, stopped by {result.stop_reason} | search "
                  f"{t_search:.0f}s, with test {rows[-1][3]:.0f}s", flush=True)
        engine = open_db(db)
        with session_scope(engine) as session:
            first_seed_run = session.scalars(select(Workflow.run_id).order_by(Workflow.id)).first()
            seed_wid = session.scalars(select(Workflow.id).where(Workflow.run_id == first_seed_run,
                                                                 Workflow.source == "seed")
                                       .order_by(Workflow.id)).first()  # answer_generate (seeds sorted by name)
        differ, compared = asyncio.run(twin_check(db, first_seed_run, seed_wid, options, spec))
        print(f"behavioural twins (answer_generate vs the same call in both branches of an if): rewards differ on "
              f"{differ}/{compared} validation problems", flush=True)
    finally:
        stop_shared_servers()
    print(promotion_stats(db, args.batch_size))
    with session_scope(open_db(db)) as session:
        total = session.scalar(select(func.count()).select_from(Evaluation))
        timeouts = session.scalar(select(func.count()).select_from(Evaluation).where(Evaluation.error_kind == "timeout"))
        tokens = session.scalar(select(func.sum(Evaluation.prompt_tokens + Evaluation.completion_tokens))) or 0
    from workflow_rl.llm import ResponseCache

    fresh = len(ResponseCache(os.environ["WORKFLOW_RL_LLM_CACHE"]))
    wall = time.perf_counter() - t_all
    seed_acc = [r[1]["seed"][2] for r in rows]
    searched_acc = [r[1]["searched"][2] for r in rows]
    print()
    print(f"test accuracy, mean over {len(rows)} seeds: best hand-written seed {statistics.mean(seed_acc):.3f}, "
          f"best searched {statistics.mean(searched_acc):.3f}")
    print(f"evaluations stored {total} ({timeouts} timeouts); tokens of stored evaluations {tokens} (cache replays "
          f"included); distinct LLM requests sent {fresh}; wall {wall:.0f}s")
    print(f"RESULT local_search_minus_seed={statistics.mean(searched_acc) - statistics.mean(seed_acc):.3f}")
    print(f"RESULT local_timeouts={timeouts / max(total, 1):.3f}")
    print(f"RESULT local_wall_s={wall:.0f}")


if __name__ == "__main__":
    main()
