"""The wall clock of one execution, which stands still while the execution waits for the host.

A workflow's wall limit (``Limits.wall_s``) charges the workflow for its own time: its code, the
round trips to the host and the tool operators it calls. It does not charge the time its LLM
requests spend waiting for a concurrency slot and for the server's answer, nor the time a
``run_code`` call waits for a free code slot: with many executions sharing a slow endpoint, that
time depends on the neighbours and the server, and counting it turned the server's slowness into
``timeout`` rewards of 0. Those waits are bounded elsewhere, as infrastructure: the LLM client's
``max_wait_s`` (an :class:`~operators.base.InfrastructureError` past it) and the code slots
(each holder is bounded by its own ``run_code`` timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from operators.base import LLMClient, LLMRequest, LLMResponse


class ExecClock:
    """A ``budget_s`` countdown on the event loop that calls ``on_expire`` unless paused or stopped.

    Pauses nest: the clock stands still while at least one :meth:`paused` block is open (an
    operator may run several LLM requests at once) and runs again when the last one closes.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, budget_s: float, on_expire: Callable[[], Any]):
        """A clock not yet running (see :meth:`start`)."""
        self._loop = loop
        self.budget_s = budget_s
        self._on_expire = on_expire
        self._left = budget_s
        self._since = 0.0  # loop time when the clock last started running
        self._timer: asyncio.TimerHandle | None = None
        self._pauses = 0
        self._paused_since = 0.0
        self._stopped = False
        self.waited_s = 0.0
        """Seconds the clock stood still so far (time not charged to the workflow)."""

    @property
    def charged_s(self) -> float:
        """Seconds charged to the workflow so far (of this budget)."""
        running = self._loop.time() - self._since if self._timer is not None else 0.0
        return self.budget_s - self._left + running

    def start(self) -> None:
        """Start counting down (no-op while paused: the countdown starts when the pause ends)."""
        if not self._stopped and self._pauses == 0 and self._timer is None:
            self._since = self._loop.time()
            self._timer = self._loop.call_at(self._since + self._left, self._expire)

    def _halt(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._left -= self._loop.time() - self._since

    def pause(self) -> None:
        """Stop the countdown until the matching :meth:`resume`."""
        self._pauses += 1
        if self._pauses == 1:
            self._paused_since = self._loop.time()
            self._halt()

    def resume(self) -> None:
        """End one :meth:`pause`; the countdown goes on when no pause is left."""
        self._pauses -= 1
        if self._pauses == 0:
            self.waited_s += self._loop.time() - self._paused_since
            self.start()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Block during which the clock stands still."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def restart(self) -> None:
        """A fresh budget (the execution starts over through no fault of its own)."""
        self._halt()
        self._left = self.budget_s
        self.start()

    def stop(self) -> None:
        """Never expire (the execution ended)."""
        self._stopped = True
        self._halt()

    def _expire(self) -> None:
        self._timer = None
        self._left = 0.0
        if not self._stopped:
            self._on_expire()


class PausingLLM:
    """An :class:`~operators.base.LLMClient` that stops an execution's clock while a request is pending.

    Other attributes (``model``, ``sampler``, ...) are those of the wrapped client.
    """

    def __init__(self, inner: LLMClient, clock: ExecClock):
        """Wrap ``inner`` for the execution timed by ``clock``."""
        self._inner = inner
        self._clock = clock

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """The wrapped client's answer; the wait for it (slot, server, retries) is not charged."""
        with self._clock.paused():
            return await self._inner.complete(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
