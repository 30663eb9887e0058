"""The wall limit charges a workflow for its own time: waits on LLM requests and for a code slot are
not counted; the workflow's own code and tool calls are, and an LLM wait past the client's bound
is an outage (InfrastructureError), never a ``timeout``."""

from __future__ import annotations

import asyncio
import time

import pytest

from operators.base import InfrastructureError, LLMChoice, LLMRequest, LLMResponse, OpContext, Operator
from operators.registry import get_operators
from operators.runtime import Limits, Sandbox
from operators.sandbox_clock import ExecClock
from workflow_rl.llm import OpenAICompatibleClient
from workflow_rl.llm.openai import LLMWaitExceeded
from workflow_rl.llm.testing import ScriptedOpenAIServer, ScriptedReply


class SlowLLM:
    """An in-process LLM client that answers after ``delay_s``, one request at a time."""

    model = "slow"

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.lock: asyncio.Lock | None = None

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.lock = self.lock or asyncio.Lock()
        async with self.lock:  # one at a time: later requests wait for a "slot"
            await asyncio.sleep(self.delay_s)
        return LLMResponse(choices=(LLMChoice(text=f"<answer>{request.messages[-1][1][-3:]}</answer>"),))


async def _ask(ctx: OpContext, text: str) -> str:
    response = await ctx.llm.complete(LLMRequest(messages=(("user", text),)))
    return response.choices[0].text


async def _nap(ctx: OpContext, seconds: float) -> str:
    await asyncio.sleep(seconds)  # a tool's own time: the workflow chose to spend it
    return "rested"


OPS = {
    "ask": Operator("ask", _ask, "ask(text: str) -> str", "Asks the model.", kind="llm"),
    "nap": Operator("nap", _nap, "nap(seconds: float) -> str", "Sleeps."),
}
ASK = "async def solve(problem, ops):\n    return await ops.ask(problem)\n"


def _run_many(limits: Limits, llm, items: list[tuple[str, str]], workers: int = 2, ops=OPS):
    async def main():
        async with Sandbox(ops, lambda: OpContext(llm=llm), workers=workers, limits=limits) as box:
            await box.run("async def solve(problem, ops):\n    return problem\n", "warm")  # worker start-up
            return await box.run_many(items)

    return asyncio.run(main())


def _llm_queue():
    """12 executions share a model that answers one request per 0.15 s: the last waits ~1.8 s for
    its answer, three times its wall limit, yet its own time is a few milliseconds."""
    return _run_many(Limits(wall_s=0.6), SlowLLM(0.15), [(ASK, f"q{i:02d}") for i in range(12)])


def _code_slot_queue():
    """One worker = one code slot; ten executions each run a 0.3 s script through it (3 s in all)."""
    code = ("async def solve(problem, ops):\n"
            "    return await ops.run_python('import time\\ntime.sleep(0.3)\\nprint(7)')\n")
    return _run_many(Limits(wall_s=1.5), None, [(code, str(i)) for i in range(10)], workers=1,
                     ops=get_operators(["run_python"]))


def test_queueing_for_a_one_at_a_time_model_is_not_charged():
    results = _llm_queue()
    assert [r.error_kind for r in results] == [None] * 12, [r.error_message for r in results]
    assert max(r.latency_s for r in results) > 1.2  # the premise: waits far beyond the wall limit


def test_waiting_for_a_code_slot_is_not_charged():
    results = _code_slot_queue()
    assert [(r.error_kind, (r.output or "").strip()) for r in results] == [(None, "7")] * 10, results
    assert max(r.latency_s for r in results) > 1.5


@pytest.mark.parametrize("load", [_llm_queue, _code_slot_queue], ids=["llm", "code-slot"])
def test_control_without_pausing_the_same_load_times_out(load, monkeypatch):
    """The two tests above can fail: with the clock running through the waits, the same load times out."""
    monkeypatch.setattr(ExecClock, "pause", lambda self: None)
    monkeypatch.setattr(ExecClock, "resume", lambda self: None)
    assert sum(r.error_kind == "timeout" for r in load()) >= 3


def test_own_time_still_counts_after_long_llm_waits():
    spin = "async def solve(problem, ops):\n    x = await ops.ask(problem)\n    n = 0\n    while True:\n        n = n + 1\n"
    napper = "async def solve(problem, ops):\n    x = await ops.ask(problem)\n    return await ops.nap(1.0)\n"
    asker = "async def solve(problem, ops):\n    x = 0\n    while True:\n        x = await ops.ask(problem)\n"
    limits = Limits(wall_s=0.6, cpu_s=0.3, max_op_calls=20)
    results = _run_many(limits, SlowLLM(0.05), [(spin, "q"), (napper, "q"), (asker, "q")])
    spun, napped, asked = results
    assert spun.error_kind == "timeout"  # a loop of its own code (CPU or wall limit, whichever first)
    assert napped.error_kind == "timeout" and "wall-clock limit of 0.6s" in napped.error_message
    assert "not counted" in napped.error_message
    # Endless LLM calls: each wait is free, but the operator-call budget still ends it.
    assert asked.error_kind == "timeout" and "max_op_calls=20" in asked.error_message


def test_clock_pauses_nest_and_restart_gives_a_fresh_budget():
    async def main():
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        clock = ExecClock(loop, 0.2, lambda: fired.append(loop.time()))
        start = loop.time()
        clock.start()
        await asyncio.sleep(0.1)
        clock.pause()
        clock.pause()  # two requests of one operator in flight
        clock.resume()
        await asyncio.sleep(0.3)  # still one pause open: no expiry
        assert not fired and 0.09 < clock.charged_s < 0.15
        clock.resume()
        clock.restart()  # a fresh 0.2 s from now
        await asyncio.sleep(0.35)
        assert len(fired) == 1 and fired[0] - start >= 0.6 and clock.waited_s >= 0.29
        clock.stop()

    asyncio.run(main())


def test_llm_wait_past_the_bound_is_an_outage_not_a_timeout():
    with ScriptedOpenAIServer(lambda req: ScriptedReply(text="<answer>1</answer>", delay_s=1.0), slots=1) as server:
        client = OpenAICompatibleClient(server.url, "m", max_wait_s=0.4, timeout_s=30)
        ops = get_operators(["answer_generate"])
        code = "async def solve(problem, ops):\n    return await ops.answer_generate(problem)\n"
        started = time.monotonic()
        with pytest.raises(LLMWaitExceeded, match="LLM wait bound of 0.4s") as err:
            _run_many(Limits(wall_s=60), client, [(code, f"{i} + 1?") for i in range(4)], ops=ops)
    assert isinstance(err.value, InfrastructureError) and time.monotonic() - started < 20
