"""Throughput of the sandboxed runtime vs running the same workflows in-process.

Runs the ``calc`` seed workflows (plus the hand-routed and per-recipe oracle workflows, 2-4 tool
calls each) over the validation split, ``--repeat`` times, first in-process without isolation
(``run_inprocess``, sequential awaits: the fastest the host can go) and then through a
:class:`Sandbox` (all executions submitted concurrently). Outputs of both paths are compared.

    python benchmarks/bench_runtime.py [--workers 2] [--repeat 20]

Ends with ``RESULT sandbox_exec_per_s=...`` and ``RESULT sandbox_ratio=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from operators.base import OpContext, OperatorError  # noqa: E402
from operators.registry import get_operators  # noqa: E402
from operators.runtime import Sandbox, run_inprocess  # noqa: E402
from workflow_rl.tasks import get_benchmark  # noqa: E402


def _jobs(repeat: int) -> tuple[list[tuple[str, str]], dict]:
    bench = get_benchmark("calc")
    workflows = [*bench.seed_workflows().values(), bench.routed_workflow(), *bench.oracle_workflows().values()]
    problems = bench.problems("validation")
    jobs = [(code, p.text) for _ in range(repeat) for code in workflows for p in problems]
    return jobs, get_operators(bench.operator_names)


async def _inprocess(jobs, operators) -> tuple[float, list]:
    outputs = []
    t0 = time.perf_counter()
    for code, problem in jobs:
        try:
            outputs.append(await run_inprocess(code, problem, operators, OpContext()))
        except OperatorError:  # a workflow that fails on a problem is still an execution
            outputs.append("error:operator_error")
        except Exception:  # noqa: BLE001
            outputs.append("error:crash")
    return time.perf_counter() - t0, outputs


async def _sandboxed(jobs, operators, workers: int) -> tuple[float, list, int]:
    async with Sandbox(operators, workers=workers) as sandbox:
        await sandbox.run_many(jobs[: 4 * workers])  # warm-up: worker start-up is not throughput
        t0 = time.perf_counter()
        results = await sandbox.run_many(jobs)
        elapsed = time.perf_counter() - t0
        killed = sandbox.killed_workers
    outputs = [r.output if r.ok else f"error:{r.error_kind}" for r in results]
    return elapsed, outputs, killed


def main() -> None:
    """Run both paths and print side-by-side numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="sandbox worker processes")
    parser.add_argument("--repeat", type=int, default=20, help="passes over (workflows x validation problems)")
    args = parser.parse_args()
    jobs, operators = _jobs(args.repeat)
    t_in, out_in = asyncio.run(_inprocess(jobs, operators))
    t_sb, out_sb, killed = asyncio.run(_sandboxed(jobs, operators, args.workers))
    ok_in = sum(not o.startswith("error:") for o in out_in)
    agree = sum(a == b for a, b in zip(out_in, out_sb, strict=True))
    rate_in, rate_sb = len(jobs) / t_in, len(jobs) / t_sb
    print(f"executions: {len(jobs)} ({ok_in} returned an output in-process); cores: {os.cpu_count()}; "
          f"sandbox workers: {args.workers}")
    print(f"{'path':<12}{'seconds':>10}{'exec/s':>12}")
    print(f"{'in-process':<12}{t_in:>10.3f}{rate_in:>12.0f}")
    print(f"{'sandbox':<12}{t_sb:>10.3f}{rate_sb:>12.0f}")
    print(f"outputs identical: {agree}/{len(jobs)}; workers killed: {killed}")
    print(f"RESULT sandbox_exec_per_s={rate_sb:.0f}")
    print(f"RESULT inprocess_exec_per_s={rate_in:.0f}")
    print(f"RESULT sandbox_ratio={rate_sb / rate_in:.3f}")


if __name__ == "__main__":
    main()
