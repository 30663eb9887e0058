"""How many LLM requests to keep in flight: follow what the endpoint can serve, measured.

A server that answers one request at a time (llama.cpp's server with its default single slot)
gains nothing from eight requests in flight: seven of them wait inside the server, where every
second of waiting counts against the HTTP timeout and hides how long the server really takes.
A batching server (vLLM, SGLang, hosted APIs) serves many at once for almost the same latency.
The URL does not say which kind an endpoint is, so :class:`ConcurrencyController` measures it:

* it starts at one request in flight and, while requests wait for a slot (demand exceeds the
  limit) and the endpoint's time per completion token stays within ``tolerance`` times the best
  seen, raises the limit (doubling at first, then one at a time) up to the ``ceiling``;
* when the time per token rises above ``tolerance`` times the best, requests are queueing in the
  server: the limit drops in proportion (``limit * tolerance * best / measured``, at least by one);
* an overload status (429/503) halves it.

Decisions are taken on the mean time per token over windows of ``max(MIN_WINDOW, limit)``
requests that were all sent under the current limit (the mean, as Little's law relates it to the
requests in flight). The first request to finish under a new limit is left out of its window: it
ran beside requests admitted under the old limit (or opened the connection), so it measures a
mix. Time per token (seconds divided by completion tokens + 1), not per request, because replies
range from a few tokens to thousands.
:class:`Slots` is the FIFO gate that admits requests under the controller's current limit.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

MIN_WINDOW = 4
"""Fewest finished requests a limit decision is based on."""
TOLERANCE = 1.5
"""Time per token may reach this multiple of the best measured before the limit is lowered."""


@dataclass(frozen=True)
class Ticket:
    """One admitted request: the limit it was admitted under and whether it had to wait for a slot."""

    limit: int
    waited: bool


class ConcurrencyController:
    """The limit on requests in flight to one endpoint, adapted from measured latency (see module doc).

    ``adaptive=False`` pins the limit at ``ceiling`` (the old fixed bound). The controller holds no
    event-loop state, so one instance serves a client used from several event loops in turn.
    """

    def __init__(self, ceiling: int, adaptive: bool = True, tolerance: float = TOLERANCE):
        """Start at 1 request in flight (``ceiling`` when not adaptive)."""
        if ceiling < 1:
            raise ValueError(f"ceiling must be >= 1, got {ceiling}")
        if tolerance <= 1:
            raise ValueError(f"tolerance must be > 1, got {tolerance}")
        self.ceiling = ceiling
        self.adaptive = adaptive
        self.tolerance = tolerance
        self.limit = 1 if adaptive else ceiling
        self.best_s_per_token: float | None = None
        """Lowest time per completion token measured on a window (the endpoint without our queueing)."""
        self._growing_fast = True  # slow start: double until the first sign of queueing
        self._window: list[float] = []  # seconds per token of the requests of the current window
        self._window_waited = False
        self._skip = True  # leave out the first request of the window (see the module doc)

    def on_success(self, ticket: Ticket, elapsed_s: float, completion_tokens: int) -> None:
        """Account one request answered on its first attempt (``elapsed_s`` from send to answer)."""
        if not self.adaptive or ticket.limit != self.limit:
            return  # sent under another limit: it measures that one, not this
        if self._skip:
            self._skip = False
            return
        self._window.append(elapsed_s / (max(0, completion_tokens) + 1))
        self._window_waited |= ticket.waited
        if len(self._window) < max(MIN_WINDOW, self.limit):
            return
        rate = sum(self._window) / len(self._window)
        demand_exceeded = self._window_waited
        self._window, self._window_waited, self._skip = [], False, True
        best = self.best_s_per_token
        if best is None or rate < best or self.limit == 1:
            # At one request in flight nothing of ours queues in the server: what is measured there
            # is the endpoint's own speed, also when it got slower since the best was seen.
            self.best_s_per_token = best = rate
        if rate > self.tolerance * best:
            self._growing_fast = False
            self.limit = max(1, min(self.limit - 1, int(self.limit * self.tolerance * best / rate)))
        elif demand_exceeded and self.limit < self.ceiling:
            self.limit = min(self.ceiling, self.limit * 2 if self._growing_fast else self.limit + 1)

    def on_overload(self) -> None:
        """The endpoint answered 429/503 (too many requests): halve the limit."""
        if self.adaptive:
            self._growing_fast = False
            self.limit = max(1, self.limit // 2)
            self._window, self._window_waited, self._skip = [], False, True


class Slots:
    """FIFO gate admitting at most ``controller.limit`` requests at once (bound to one event loop)."""

    def __init__(self, controller: ConcurrencyController):
        """A gate with no request in flight."""
        self.controller = controller
        self.in_use = 0
        self._waiters: deque[asyncio.Future] = deque()

    async def acquire(self) -> Ticket:
        """Wait for a slot (first come, first served); the caller must :meth:`release` it."""
        if self.in_use < self.controller.limit and not self._waiters:
            self.in_use += 1
            return Ticket(self.controller.limit, waited=False)
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over just as the caller gave up: pass it on
            elif future in self._waiters:  # release() drops cancelled waiters it meets on its own
                self._waiters.remove(future)
            raise
        return Ticket(self.controller.limit, waited=True)

    def release(self) -> None:
        """Free a slot and admit as many waiters as the (possibly changed) limit allows."""
        self.in_use -= 1
        while self._waiters and self.in_use < self.controller.limit:
            future = self._waiters.popleft()
            if not future.done():
                self.in_use += 1  # handed over: the waiter owns the slot when it wakes
                future.set_result(None)
