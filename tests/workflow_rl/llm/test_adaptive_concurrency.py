"""Adaptive LLM concurrency and the LLM wait bound: the controller on simulated endpoints, the slot
gate, and the real client against the scripted local server made single-slot and slow."""

from __future__ import annotations

import asyncio

import pytest

from operators.base import InfrastructureError, LLMRequest
from workflow_rl.llm import OpenAICompatibleClient, make_executor
from workflow_rl.llm.concurrency import MIN_WINDOW, ConcurrencyController, Slots, Ticket
from workflow_rl.llm.openai import LLMWaitExceeded
from workflow_rl.llm.testing import ScriptedOpenAIServer, ScriptedReply


def simulate(controller: ConcurrencyController, server_slots: int, windows: int, s_per_token: float = 0.01,
             tokens: int = 99) -> list[int]:
    """Feed windows of saturated requests from an endpoint serving ``server_slots`` at once.

    A request's latency is its service time stretched by the requests queued in the server with
    it (``limit / server_slots`` when the limit exceeds the slots). Returns the limit after each window.
    """
    limits = []
    for _ in range(windows):
        limit = controller.limit
        latency = s_per_token * (tokens + 1) * max(1.0, limit / server_slots)
        for _ in range(max(MIN_WINDOW, limit) + 1):  # + the window's first request, left out
            controller.on_success(Ticket(limit, waited=True), latency, tokens)
        limits.append(controller.limit)
    return limits


def test_single_slot_endpoint_keeps_the_limit_at_one_or_two():
    limits = simulate(ConcurrencyController(ceiling=8), server_slots=1, windows=40)
    assert max(limits) <= 2 and limits.count(1) >= 15, limits


def test_batching_endpoint_grows_to_the_ceiling_fast():
    limits = simulate(ConcurrencyController(ceiling=8), server_slots=32, windows=5)
    assert limits[:3] == [2, 4, 8] and limits[-1] == 8, limits  # doubling, then held at the ceiling


def test_limit_settles_near_what_the_endpoint_serves():
    limits = simulate(ConcurrencyController(ceiling=64), server_slots=8, windows=60)
    # The server's 8 slots stay busy, and the queue in the server stays near tolerance (1.5) x them.
    assert all(8 <= x <= 13 for x in limits[20:]), limits


def test_no_growth_without_demand_and_stale_samples_ignored():
    c = ConcurrencyController(ceiling=8)
    for _ in range(10):
        c.on_success(Ticket(1, waited=False), 1.0, 99)  # never had to wait for a slot: no reason to grow
    assert c.limit == 1
    c.limit = 4
    for _ in range(10):
        c.on_success(Ticket(2, waited=True), 100.0, 0)  # sent under limit 2: says nothing about 4
    assert c.limit == 4


def test_first_request_of_a_window_is_left_out():
    c = ConcurrencyController(ceiling=8)
    c.on_success(Ticket(1, waited=False), 30.0, 99)  # opened the connection: 0.3 s/token
    for _ in range(MIN_WINDOW):
        c.on_success(Ticket(1, waited=True), 1.0, 99)
    assert c.best_s_per_token == pytest.approx(0.01) and c.limit == 2


def test_overload_halves_and_fixed_mode_never_moves():
    c = ConcurrencyController(ceiling=8)
    c.limit = 8
    c.on_overload()
    assert c.limit == 4
    fixed = ConcurrencyController(ceiling=5, adaptive=False)
    simulate(fixed, server_slots=1, windows=5)
    fixed.on_overload()
    assert fixed.limit == 5


def test_endpoint_that_slowed_down_is_remeasured_at_one_request():
    c = ConcurrencyController(ceiling=8)
    simulate(c, server_slots=4, windows=6, s_per_token=0.01)
    assert c.limit >= 4
    # The server became 3x slower for every request (another tenant): the limit drops to 1, where
    # the new speed becomes the reference, and it grows back to what the server serves.
    limits = simulate(c, server_slots=4, windows=30, s_per_token=0.03)
    assert 1 in limits and limits[-1] >= 4, limits


def test_slots_are_fifo_respect_the_limit_and_survive_cancellation():
    async def main():
        controller = ConcurrencyController(ceiling=4)
        controller.limit = 2
        slots = Slots(controller)
        order: list[str] = []

        async def user(name: str, hold: float):
            ticket = await slots.acquire()
            order.append(name)
            assert slots.in_use <= controller.limit
            await asyncio.sleep(hold)
            slots.release()
            return ticket

        first = [asyncio.ensure_future(user(n, 0.05)) for n in ("a", "b")]
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(user("cancelled", 0.05))
        rest = [asyncio.ensure_future(user(n, 0.01)) for n in ("c", "d", "e")]
        await asyncio.sleep(0.01)
        gone.cancel()
        tickets = await asyncio.gather(*first, *rest)
        assert order == ["a", "b", "c", "d", "e"] and slots.in_use == 0
        assert [t.waited for t in tickets] == [False, False, True, True, True]
        # A raised limit admits waiters at the next release.
        controller.limit = 1
        holder = await slots.acquire()
        waiting = [asyncio.ensure_future(slots.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        controller.limit = 3
        slots.release()
        await asyncio.sleep(0)
        assert all(w.done() for w in waiting) and slots.in_use == 3
        return holder

    asyncio.run(main())


def chat(text: str) -> LLMRequest:
    return LLMRequest(messages=(("user", text),))


def _burst(client: OpenAICompatibleClient, n: int) -> list:
    async def main():
        try:
            return await asyncio.gather(*(client.complete(chat(f"q{i}")) for i in range(n)))
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_client_keeps_a_single_slot_server_from_queueing():
    with ScriptedOpenAIServer(lambda req: ScriptedReply(text="one two three", delay_s=0.1), slots=1) as server:
        client = OpenAICompatibleClient(server.url, "m", max_concurrency=8)
        assert len(_burst(client, 24)) == 24
        # Most requests find at most one other in the server (a loaded machine can make one
        # window look fast and let the limit overshoot once; it comes back at the next window).
        adaptive = sorted(server.in_flight_at_arrival)
        assert adaptive[len(adaptive) * 3 // 4] <= 2, adaptive
        # The old fixed bound sends 8 at once into the same server: 7 of them wait inside it.
        server.in_flight_at_arrival.clear()
        _burst(OpenAICompatibleClient(server.url, "m", max_concurrency=8, adaptive_concurrency=False), 16)
        fixed = sorted(server.in_flight_at_arrival)
        assert fixed[len(fixed) // 2] >= 6 and server.max_in_flight == 8, fixed


def test_client_grows_to_what_a_parallel_server_serves():
    with ScriptedOpenAIServer(lambda req: ScriptedReply(text="one two three", delay_s=0.2), slots=8) as server:
        client = OpenAICompatibleClient(server.url, "m", max_concurrency=8)
        _burst(client, 48)
        assert server.max_in_flight >= 6 and client.concurrency.limit >= 6, client.concurrency.limit


def test_overload_status_halves_the_client_limit():
    with ScriptedOpenAIServer() as server:
        client = OpenAICompatibleClient(server.url, "m", max_concurrency=8, backoff_base_s=0.001)
        client.concurrency.limit = 8
        server.enqueue(ScriptedReply(status=429, body="{}"), "ok")
        _burst(client, 1)
        assert client.concurrency.limit == 4


def test_wait_past_the_bound_is_an_infrastructure_failure():
    with ScriptedOpenAIServer(lambda req: ScriptedReply(text="late", delay_s=1.5)) as server:
        client = OpenAICompatibleClient(server.url, "m", timeout_s=30, max_wait_s=0.3)
        with pytest.raises(LLMWaitExceeded, match="LLM wait bound of 0.3s") as err:
            _burst(client, 1)
        assert isinstance(err.value, InfrastructureError)


def test_waiting_for_a_slot_is_not_bounded_only_the_request_is():
    # Six requests through one slot take ~0.6 s in all, twice the bound; each one is answered
    # within ~0.1 s of being sent, so none exceeds it: our own queue is never an outage.
    with ScriptedOpenAIServer(lambda req: ScriptedReply(text="ok", delay_s=0.1), slots=1) as server:
        client = OpenAICompatibleClient(server.url, "m", max_concurrency=1, max_wait_s=0.3)
        assert [r.choices[0].text for r in _burst(client, 6)] == ["ok"] * 6


def test_make_executor_reads_the_wait_bound_and_adaptive_switch(monkeypatch):
    monkeypatch.setenv("WORKFLOW_RL_LLM_NO_CACHE", "1")
    for name in ("WORKFLOW_RL_LLM_MAX_WAIT", "WORKFLOW_RL_LLM_ADAPTIVE", "WORKFLOW_RL_LLM_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    client = make_executor("http://127.0.0.1:1/v1#m")
    assert client.max_wait_s == 600 and client.concurrency.adaptive and client.concurrency.limit == 1
    monkeypatch.setenv("WORKFLOW_RL_LLM_MAX_WAIT", "42")
    monkeypatch.setenv("WORKFLOW_RL_LLM_ADAPTIVE", "0")
    monkeypatch.setenv("WORKFLOW_RL_LLM_CONCURRENCY", "5")
    client = make_executor("http://127.0.0.1:1/v1#m")
    assert client.max_wait_s == 42 and not client.concurrency.adaptive and client.concurrency.limit == 5
