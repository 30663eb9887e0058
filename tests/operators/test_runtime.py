"""Sandboxed runtime: results, typed failures, limits, concurrency, protocol checks, run_code."""

from __future__ import annotations

import asyncio
import os

import pytest

import operators.sandbox_host as sandbox_host
from operators.base import OpContext, Operator, OperatorError
from operators.registry import get_operators
from operators.runtime import MAX_RESTARTS, Limits, Sandbox, run_inprocess
from workflow_rl.tasks import get_benchmark

FAST = Limits(wall_s=10.0, cpu_s=0.5, memory_mb=256, step_grace_s=8.0)  # grace: 2 busy shared cores


async def _add(ctx, a, b):
    return a + b


async def _fail(ctx, message):
    raise OperatorError(message)


async def _slow(ctx, x, seconds=0.05):
    STATE["now"] += 1
    STATE["peak"] = max(STATE["peak"], STATE["now"])
    try:
        await asyncio.sleep(seconds)
    finally:
        STATE["now"] -= 1
    return x


STATE = {"now": 0, "peak": 0}
OPS = {
    "add": Operator("add", _add, "add(a, b)", "Adds."),
    "fail": Operator("fail", _fail, "fail(message)", "Raises."),
    "slow": Operator("slow", _slow, "slow(x, seconds)", "Returns x after a delay."),
}

ADD3 = """async def solve(problem, ops):
    x = await ops.add(problem, 1)
    y = await ops.add(x, 2)
    return await ops.add(y, 3)
"""


def _solve(body: str) -> str:
    return "async def solve(problem, ops):\n" + "\n".join("    " + line for line in body.strip("\n").splitlines()) + "\n"


def run(coro):
    return asyncio.run(coro)


def test_runs_a_workflow_with_operator_calls():
    async def main():
        async with Sandbox(OPS, workers=2, limits=FAST) as sb:
            return await sb.run(ADD3, 1), await sb.run(ADD3, 10)

    first, second = run(main())
    assert first.ok and first.output == "7" and first.error_kind is None
    assert second.output == "16"
    assert first.usage.op_calls == 3 and first.latency_s > 0


def test_failures_are_typed_results():
    programs = {
        "invalid": "import os\nasync def solve(problem, ops):\n    return 1\n",
        "crash": _solve("return 1 / 0"),
        "operator_error": _solve("return await ops.fail('bad input')"),
        "output_limit": _solve("x = 'ab'\nfor i in range(12):\n    x = x + x\nreturn x"),
        # one allocation far past the limit (problem is 1: a 2 GiB list), so it fails at once whatever
        # the load; doubling a list spent the 0.5 s of CPU first on a loaded 2-core machine (a timeout)
        "memory": _solve("x = [0] * (problem << 28)\nreturn len(x)"),
        "timeout": _solve("while True:\n    pass"),
    }

    async def main():
        limits = Limits(wall_s=10.0, cpu_s=0.5, memory_mb=256, output_bytes=1000, step_grace_s=8.0)
        async with Sandbox(OPS, workers=2, limits=limits) as sb:
            results = await sb.run_many([(code, 1) for code in programs.values()] + [(ADD3, 1)])
            return results, sb.killed_workers

    results, killed = run(main())
    for (kind, _), result in zip(programs.items(), results, strict=False):
        assert result.error_kind == kind, (kind, result)
        assert result.output is None and not result.ok
    assert "line 1: imports" in results[0].error_message
    assert results[1].error_message == "ZeroDivisionError: division by zero"
    assert results[2].error_message == "bad input"
    assert results[-1].output == "7"  # served alongside the hostile ones
    assert killed == 0  # all of these are handled inside the worker


def test_operator_errors_can_be_caught_and_bad_arguments_are_operator_errors():
    caught = _solve("try:\n    return await ops.fail('x')\nexcept Exception:\n    return 'fallback'")
    bad_args = _solve("return await ops.add(1)")

    async def main():
        async with Sandbox(OPS, workers=1, limits=FAST) as sb:
            return await sb.run(caught, 0), await sb.run(bad_args, 0)

    a, b = run(main())
    assert a.output == "fallback"
    assert b.error_kind == "operator_error" and "TypeError" in b.error_message


def test_values_json_cannot_carry_fail_the_execution_not_the_host():
    async def tuple_keys(ctx):
        return {(1, 2): 3}

    ops = {**OPS, "tuple_keys": Operator("tuple_keys", tuple_keys, "tuple_keys()", "Bad result.")}
    odd_result = _solve("return await ops.tuple_keys()")

    async def main():
        async with Sandbox(ops, workers=1, limits=FAST) as sb:
            return await sb.run(ADD3, {(1, 2): 3}), await sb.run(odd_result, 0), await sb.run(ADD3, 0)

    bad_problem, bad_result, fine = run(main())
    assert bad_problem.error_kind == "crash" and "cannot send" in bad_problem.error_message
    assert bad_result.error_kind == "crash" and "cannot send" in bad_result.error_message
    assert fine.output == "6"


def test_wall_clock_and_operator_call_limits():
    slow = _solve("return await ops.slow(problem, 30)")
    many = _solve("x = 0\nwhile True:\n    x = await ops.add(x, 1)")

    async def main():
        async with Sandbox(OPS, workers=1, limits=Limits(wall_s=0.5, max_op_calls=20)) as sb:
            return await sb.run(slow, 1), await sb.run(many, 0), await sb.run(ADD3, 0)

    a, b, c = run(main())
    assert a.error_kind == "timeout" and "wall-clock" in a.error_message
    assert b.error_kind == "timeout" and "max_op_calls=20" in b.error_message
    assert b.usage.op_calls == 20
    assert c.output == "6"


def test_workers_multiplex_many_executions_awaiting_operators():
    STATE.update(now=0, peak=0)
    code = _solve("return await ops.slow(problem, 0.2)")

    async def main():
        async with Sandbox(OPS, workers=2, limits=FAST) as sb:
            return await sb.run_many([(code, i) for i in range(40)])

    results = run(main())
    assert [r.output for r in results] == [str(i) for i in range(40)]
    assert STATE["peak"] > 2  # more executions in flight than worker processes


def test_uninterruptible_step_kills_the_worker_and_restarts_bystanders():
    bomb = _solve("return sum(range(10**12))")  # one C-level loop: the in-worker alarm cannot stop it
    patient = _solve("x = await ops.slow(problem, 0.3)\nreturn await ops.add(x, 1)")

    async def main():
        async with Sandbox(OPS, workers=1, limits=Limits(cpu_s=0.5, step_grace_s=1.0)) as sb:
            bystanders = [asyncio.ensure_future(sb.run(patient, i)) for i in range(5)]
            await asyncio.sleep(0.1)  # bystanders are now waiting inside the worker
            bomb_result = await sb.run(bomb, 0)
            return bomb_result, await asyncio.gather(*bystanders), sb.killed_workers, await sb.run(ADD3, 0)

    bomb_result, bystanders, killed, after = run(main())
    assert bomb_result.error_kind == "timeout" and "no answer" in bomb_result.error_message
    assert [r.output for r in bystanders] == [str(i + 1) for i in range(5)]
    assert killed == 1
    assert after.output == "6"


def test_bystanders_survive_repeated_worker_kills_up_to_the_restart_bound():
    # Each bomb kills the only worker while the bystanders wait inside it: every kill restarts
    # them. Up to MAX_RESTARTS kills they still finish; one more and they fail as a crash.
    bomb = _solve("return sum(range(10**12))")
    patient = _solve("x = await ops.slow(problem, 0.3)\nreturn await ops.add(x, 1)")

    async def main(kills):
        async with Sandbox(OPS, workers=1, limits=Limits(wall_s=60.0, cpu_s=0.3, step_grace_s=0.7)) as sb:
            bystanders = [asyncio.ensure_future(sb.run(patient, i)) for i in range(3)]
            await asyncio.sleep(0.1)
            bombs = [await sb.run(bomb, 0) for _ in range(kills)]  # one after another: a kill each
            return bombs, await asyncio.gather(*bystanders), sb.killed_workers

    bombs, bystanders, killed = run(main(MAX_RESTARTS))
    assert killed == MAX_RESTARTS and all(b.error_kind == "timeout" for b in bombs)
    assert [r.output for r in bystanders] == ["1", "2", "3"]

    bombs, bystanders, killed = run(main(MAX_RESTARTS + 1))
    assert killed == MAX_RESTARTS + 1
    assert all(r.error_kind == "crash" and "worker lost" in r.error_message for r in bystanders)


def test_calc_seed_workflows_match_in_process_execution():
    bench = get_benchmark("calc")
    ops = get_operators(bench.operator_names)
    problems = bench.problems("validation")[:20]
    programs = [*bench.seed_workflows().values(), bench.routed_workflow()]

    async def main():
        expected = []
        for code in programs:
            for p in problems:
                try:
                    expected.append(await run_inprocess(code, p.text, ops))
                except OperatorError:
                    expected.append(None)
        async with Sandbox(ops, workers=2) as sb:
            results = await sb.run_many([(code, p.text) for code in programs for p in problems])
        scores = [await bench.score(p, r.output, OpContext()) for r, p in zip(results[-20:], problems, strict=True)]
        return expected, results, scores

    expected, results, scores = run(main())
    assert [r.output for r in results] == expected
    assert all(r.ok or r.error_kind == "operator_error" for r in results)
    assert sum(s.reward for s in scores) == 20  # the routed workflow solves every validation problem


def test_sandbox_sets_run_code_for_operators():
    ops = get_operators(["run_python"])
    code = _solve("return await ops.run_python('print(int(input()) * 2)', '21')")

    async def main():
        async with Sandbox(ops, workers=1, limits=FAST) as sb:
            return await sb.run(code, "")

    result = run(main())
    assert result.ok and result.output.strip() == "42"


def test_run_code_results():
    async def main():
        async with Sandbox(OPS, workers=1, limits=Limits(memory_mb=256, output_bytes=10_000)) as sb:
            return await asyncio.gather(
                sb.run_code("import sys\nprint(sys.stdin.read().upper())", stdin="abc"),
                sb.run_code("raise ValueError('nope')"),
                sb.run_code("while True:\n    pass", timeout_s=0.5),
                sb.run_code("print('x' * 100_000)"),
                sb.run_code("x = bytearray(2 * 1024**3)"),
                sb.run_code("def f(:\n"),
            )

    ok, raised, loop, big, memory, syntax = run(main())
    assert ok.ok and ok.stdout == "ABC\n"
    assert raised.error_kind == "crash" and raised.error_message == "ValueError: nope"
    assert "Traceback" in raised.stderr
    assert loop.error_kind == "timeout"
    assert big.error_kind == "output_limit" and len(big.stdout) <= 10_000
    assert memory.error_kind == "memory"
    assert syntax.error_kind == "crash" and "SyntaxError" in syntax.error_message


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open fds in /proc")
def test_run_code_over_the_output_cap_closes_its_pipes():
    # A script killed for flooding stdout must leave no pipe open behind it: an unread pipe stays
    # paused, its transport never closes, and the fds leak until garbage collection (which then
    # fails with "Event loop is closed" once the loop is gone).
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def main():
        async with Sandbox(OPS, workers=1, limits=Limits(output_bytes=10_000)) as sb:
            before = fds()
            results = [await sb.run_code("while True:\n    print('x' * 1000)") for _ in range(3)]
            await asyncio.sleep(0.1)  # connection_lost callbacks run on the next loop turns
            return results, before, fds()

    results, before, after = run(main())
    assert [r.error_kind for r in results] == ["output_limit"] * 3
    assert after == before


def test_run_code_imports_what_generated_solutions_use():
    source = (
        "from typing import List\nimport collections, dataclasses, fractions, functools, heapq, itertools\n"
        "import json, math, queue, random, re, statistics, string, subprocess, numpy\n"
        "def f(xs: List[int]) -> int:\n    return int(numpy.sum(xs)) + math.gcd(4, 6)\nprint(f([1, 2]))"
    )

    async def main():
        async with Sandbox(OPS, workers=1) as sb:
            return await sb.run_code(source, timeout_s=20)

    result = run(main())
    assert result.ok, result.stderr
    assert result.stdout == "5\n"


def test_sandbox_survives_a_new_event_loop_and_close_fails_pending():
    sb = Sandbox(OPS, workers=1, limits=FAST)
    assert run(sb.run(ADD3, 0)).output == "6"
    assert run(sb.run(ADD3, 1)).output == "7"  # second asyncio.run: workers are restarted

    async def pending():
        task = asyncio.ensure_future(sb.run(_solve("return await ops.slow(1, 10)"), 0))
        await asyncio.sleep(0.2)
        sb.close()
        return await task

    result = run(pending())
    assert result.error_kind == "crash" and "closed" in result.error_message


FORGERIES = {
    "wrong sequence": b'out(["done", 7, 1, "forged"])',
    "wrong execution": b'out(["done", 0, 999, "forged"])',
    "bad kind": b'out(["reply", 0, 1, True, "forged"])',
    "bad type": b'out(["done", 0, 1, ["not", "a", "string"]])',
    "garbage": b'os.write(1, b"\\x00\\x00\\x00\\x05{{{{{")',
    "huge frame": b'os.write(1, (2**31).to_bytes(4, "big"))',
    "unknown operator": b'out(["call", 0, 1, "system", ["ls"], {}])',
}


@pytest.mark.parametrize("forgery", list(FORGERIES), ids=list(FORGERIES))
def test_forged_worker_frames_kill_the_worker(forgery, tmp_path, monkeypatch):
    script = tmp_path / "evil_worker.py"
    script.write_bytes(
        b"import json, os, time\n"
        b"def out(frame):\n"
        b"    data = json.dumps(frame).encode()\n"
        b"    os.write(1, len(data).to_bytes(4, 'big') + data)\n"
        b"os.read(0, 1 << 20)\n" + FORGERIES[forgery] + b"\ntime.sleep(30)\n"
    )
    monkeypatch.setattr(sandbox_host, "WORKER_SCRIPT", str(script))

    async def main():
        async with Sandbox(OPS, workers=1, limits=FAST) as sb:
            return await sb.run(ADD3, 0), sb.killed_workers

    result, killed = run(main())
    assert not result.ok and result.output is None
    assert result.error_kind in ("crash", "output_limit")
    assert "protocol violation" in result.error_message
    assert killed == 1


def test_cancelled_runs_free_their_worker_state():
    async def main():
        async with Sandbox(OPS, workers=1, limits=FAST) as sb:
            task = asyncio.ensure_future(sb.run(_solve("return await ops.slow(1, 30)"), 0))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            after = await sb.run(ADD3, 0)
            await asyncio.sleep(0.1)  # the worker's answer to the cancel arrives
            return after, [len(w.live) for w in sb._workers], [len(w.fifo) for w in sb._workers]

    after, live, fifo = run(main())
    assert after.output == "6"
    assert live == [0] and fifo == [0]


def test_workers_are_recycled_after_max_execs():
    async def main():
        async with Sandbox(OPS, workers=2, limits=Limits(max_execs_per_worker=5)) as sb:
            first_pids = {w.proc.pid for w in sb._workers}
            results = []
            for i in range(6):  # batches: the retiring worker drains, then a fresh one takes over
                results += await sb.run_many([(ADD3, 10 * i + j) for j in range(5)])
            pids = {w.proc.pid for w in sb._workers}
            return results, first_pids, pids, sb.killed_workers

    results, first_pids, pids, killed = run(main())
    assert [r.output for r in results] == [str(n + 6) for n in range(60) if n % 10 < 5]
    assert not first_pids & pids  # every original worker was retired and replaced
    assert killed == 0  # retiring is not a kill
