"""Sandboxed runtime: workflow programs run in killable worker processes, operators on the host.

:class:`Sandbox` keeps ``workers`` persistent worker processes (``operators/sandbox_worker.py``).
Each worker multiplexes many executions: an ``await ops.<name>(...)`` in the workflow suspends
its coroutine (a trampoline, no asyncio in the worker), the request travels to the host, the host
awaits the real async operator (LLM calls of all executions run concurrently) and sends the
reply back. Workflow faults never raise here: every failure is an :class:`ExecutionResult` with a
typed ``error_kind`` (``invalid``, ``timeout``, ``memory``, ``output_limit``, ``crash``,
``operator_error``). The one exception is an operator raising
:class:`~operators.base.InfrastructureError` (the LLM endpoint is down after its retries): that is
not the workflow's fault, so :meth:`Sandbox.run` raises it and :meth:`Sandbox.run_many` cancels
the rest of the batch; callers abort instead of storing rewards of 0.

Isolation (defence in depth): the validator's AST allow-list, restricted ``__builtins__``, an
audit hook and rlimits in the worker (see ``sandbox_worker``), and the host's distrust of the
channel: frames are length-prefixed JSON (never pickle), each answer must echo the sequence
number of the oldest unanswered message, and any violation kills the worker. A worker that stops
answering for ``cpu_s + step_grace_s`` is killed; the execution it was running fails with
``timeout`` and the other executions it held are restarted on a fresh worker, at most
``MAX_RESTARTS`` times (their operator calls are repeated).

The wall limit charges a workflow for its own time only (``operators/sandbox_clock.py``): the
clock of an execution stands still while an LLM request of it waits for a slot and the server,
and while a ``run_code`` call waits for a free code slot. Those waits are bounded as what they
are, infrastructure: an LLM request past the client's wait bound raises an
:class:`~operators.base.InfrastructureError` (the outage path above), never a ``timeout``.

``run_code`` runs untrusted model-written Python (``run_python``, programmer, tests), which the
validator cannot vet: each call is a fresh process with OS-level limits (``sandbox_code``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from operators.base import CodeResult, ExecutionResult, OpContext, Operator
from operators.sandbox_clock import ExecClock, PausingLLM
from operators.sandbox_code import run_code_process
from operators.sandbox_host import WorkerHandle
from operators.sandbox_inprocess import run_inprocess
from operators.sandbox_state import Execution, Limits
from operators.validate import WorkflowValidationError, validate_workflow

__all__ = ["Limits", "Sandbox", "run_inprocess"]  # run_inprocess lives in operators.sandbox_inprocess

_STARTUP_GRACE_S = 20.0
MAX_RESTARTS = 3
"""Most times one execution is rerun after losing its worker to another execution's fault."""


class Sandbox:
    """A pool of sandbox workers running workflow programs; use as an async context manager.

    ``operators`` are the host-side operators workflows may call; ``ctx_factory`` makes the
    :class:`OpContext` of an execution when ``run`` gets none (its ``run_code`` is set to this
    sandbox's :meth:`run_code` when empty).
    """

    def __init__(
        self,
        operators: Mapping[str, Operator],
        ctx_factory: Callable[[], OpContext] | None = None,
        workers: int | None = None,
        limits: Limits = Limits(),
    ):
        self.operators = dict(operators)
        self.ctx_factory = ctx_factory or OpContext
        self.n_workers = max(1, workers or os.cpu_count() or 1)
        self.limits = limits
        self._workers: list[WorkerHandle] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tmp: str | None = None
        self._next_id = 0
        self._invalid: dict[str, str | None] = {}  # code -> validation error (None = valid)
        self._watchdog: asyncio.Task | None = None
        self._code_slots: asyncio.Semaphore | None = None
        self.killed_workers = 0
        """How many workers were killed (timeouts, protocol violations, deaths): a health metric."""

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Sandbox:
        self._start()
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._workers:
            return
        if self._workers:  # used from a new event loop: the old pipes belong to the old loop
            self.close()
        self._loop = loop
        self._tmp = tempfile.mkdtemp(prefix="wfrl-sandbox-")
        self._workers = [self._spawn() for _ in range(self.n_workers)]
        self._code_slots = asyncio.Semaphore(self.n_workers)
        self._watchdog = loop.create_task(self._watch())

    def _spawn(self) -> WorkerHandle:
        return WorkerHandle(self, self._loop, self._tmp, self.limits)

    def close(self) -> None:
        """Kill all workers and remove the sandbox temp area; pending executions end as ``crash``."""
        for worker in self._workers:
            worker.kill("sandbox closed", culprit_kind="crash", replace=False)
        self._workers = []
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # ------------------------------------------------------------------ public API

    async def run(self, code: str, problem: Any, ctx: OpContext | None = None) -> ExecutionResult:
        """Run ``solve(problem, ops)`` of ``code`` in a worker; never raises for workflow faults.

        ``problem`` must be JSON-serialisable (usually the problem text). Raises the
        :class:`~operators.base.InfrastructureError` an operator raised (an outage, not a fault).
        """
        t0 = time.perf_counter()
        ctx = ctx if ctx is not None else self.ctx_factory()
        if ctx.run_code is None:
            ctx.run_code = self.run_code
        error = self._validate(code)
        if error is not None:
            return ExecutionResult(None, "invalid", error, time.perf_counter() - t0, ctx.usage)
        self._start()
        future = self._loop.create_future()
        self._next_id += 1
        ex = Execution(self._next_id, code, problem, future,
                   ExecClock(self._loop, self.limits.wall_s, lambda: self._on_deadline(ex)))
        ex.ctx = self._exec_context(ctx, ex.clock)
        ex.clock.start()
        self._dispatch(ex)
        try:
            output, kind, message = await future
        except asyncio.CancelledError:
            self._abandon(ex)  # the caller gave up: free the worker's coroutine and our bookkeeping
            raise
        return ExecutionResult(output, kind, message, time.perf_counter() - t0, ctx.usage)

    async def run_many(self, items: Iterable[tuple]) -> list[ExecutionResult]:
        """Run ``(code, problem)`` or ``(code, problem, ctx)`` tuples concurrently; results in order.

        If one run raises (an :class:`~operators.base.InfrastructureError`), the others are
        cancelled, so an outage ends the batch at once instead of failing every execution slowly.
        """
        tasks = [asyncio.ensure_future(self.run(*item)) for item in items]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # let them free their workers' state
            raise

    async def run_code(self, source: str, stdin: str = "", timeout_s: float = 5.0) -> CodeResult:
        """Run untrusted Python ``source`` as a script in a fresh limited process (not validated)."""
        return await self._run_code(source, stdin, timeout_s)

    async def _run_code(self, source: str, stdin: str = "", timeout_s: float = 5.0, *,
                        clock: ExecClock | None = None) -> CodeResult:
        """:meth:`run_code`; the wait for a free code slot stops ``clock`` (the run itself does not)."""
        self._start()
        slots = self._code_slots
        with clock.paused() if clock is not None else contextlib.nullcontext():
            await slots.acquire()
        try:
            return await run_code_process(source, stdin, min(timeout_s, self.limits.wall_s), self.limits, self._tmp)
        finally:
            slots.release()

    # ------------------------------------------------------------------ internals

    def _exec_context(self, ctx: OpContext, clock: ExecClock) -> OpContext:
        """The execution's own view of ``ctx``: its LLM waits and code-slot waits stop ``clock``.

        A shallow copy, so usage and extras stay the caller's objects (accounting reaches them) and
        the caller's context is not rewired (it may be shared by several executions).
        """
        llm = PausingLLM(ctx.llm, clock) if ctx.llm is not None else None
        run_code = ctx.run_code
        if run_code == self.run_code:
            run_code = functools.partial(self._run_code, clock=clock)
        return dataclasses.replace(ctx, llm=llm, run_code=run_code)

    def _validate(self, code: str) -> str | None:
        if code in self._invalid:
            return self._invalid[code]
        try:
            validate_workflow(code, self.operators)
            error = None
        except WorkflowValidationError as exc:
            error = str(exc)
        if len(self._invalid) > 100_000:
            self._invalid.clear()
        self._invalid[code] = error
        return error

    def _dispatch(self, ex: Execution) -> None:
        """Start (or restart) an execution on the least-loaded live worker."""
        live = [w for w in self._workers if not w.retiring]
        # Prefer workers not busy in a step (empty fifo), then the fewest executions held.
        worker = min(live, key=lambda w: (len(w.fifo), len(w.live))) if live else None
        if worker is None:
            worker = self._spawn()
            self._workers.append(worker)
        ex.worker = worker
        ex.started = True
        worker.start_exec(ex)
        if worker.retiring and not worker.live:
            self._retire(worker)

    def _retire(self, worker: WorkerHandle) -> None:
        worker.kill("retired", culprit_kind="crash", replace=False)
        if worker in self._workers:
            self._workers.remove(worker)
        self._workers.append(self._spawn())

    def replace_worker(self, worker: WorkerHandle) -> None:
        """Called by a worker that died or was killed: spawn its successor."""
        self.killed_workers += 1
        if worker in self._workers:
            self._workers.remove(worker)
            if self._tmp is not None:
                self._workers.append(self._spawn())

    def restart_or_fail(self, ex: Execution, message: str) -> None:
        """An execution lost its worker through no fault of its own: rerun it (a bounded number of times).

        A bystander can lose its worker more than once when several hostile programs share the
        pool (each kill restarts every execution the worker held), and failing it then would
        store a reward of 0 for a neighbour's fault. Restarts stay bounded by ``MAX_RESTARTS``
        and by the wall clock: only the first restart gets a fresh one.
        """
        if ex.future.done():
            return
        for task in ex.tasks:
            task.cancel()
        ex.tasks.clear()
        if ex.restarts >= MAX_RESTARTS or self._tmp is None:
            self.finish(ex, None, "crash", message)
            return
        ex.restarts += 1
        ex.epoch += 1
        if ex.restarts == 1:
            # The time lost with the dead worker was not this execution's fault: a fresh clock, once.
            ex.clock.restart()
        self._dispatch(ex)

    def finish(self, ex: Execution, output: str | None, kind: str | None, message: str | None) -> None:
        """Resolve an execution (idempotent)."""
        if not ex.future.done():
            self._release(ex)
            ex.future.set_result((output, kind, message))

    def abort(self, ex: Execution, error: BaseException) -> None:
        """End an execution by raising ``error`` from :meth:`run` (an outage, not a workflow fault)."""
        if not ex.future.done():
            self._release(ex)
            ex.future.set_exception(error)

    def _release(self, ex: Execution) -> None:
        """Stop an execution's clock and operator tasks and free its worker slot."""
        ex.clock.stop()
        for task in ex.tasks:
            task.cancel()
        ex.tasks.clear()
        worker = ex.worker
        if worker is not None:
            worker.live.pop(ex.id, None)
            if worker.retiring and not worker.live and worker in self._workers:
                self._retire(worker)

    def _abandon(self, ex: Execution) -> None:
        ex.clock.stop()
        for task in ex.tasks:
            task.cancel()
        ex.tasks.clear()
        worker = ex.worker
        if worker is not None and worker.live.pop(ex.id, None) is not None and not worker.dead:
            worker.cancel_exec(ex)

    def _on_deadline(self, ex: Execution) -> None:
        if ex.future.done():
            return
        worker = ex.worker
        message = (f"wall-clock limit of {self.limits.wall_s}s exceeded (the workflow's own time; "
                   f"{ex.clock.waited_s:.1f}s of waiting for LLM answers and code slots not counted)")
        if worker is not None and worker.is_running(ex):
            worker.kill(message, culprit_kind="timeout")
            return
        self.finish(ex, None, "timeout", message)
        if worker is not None and not worker.dead:
            worker.cancel_exec(ex)

    async def _watch(self) -> None:
        """Kill workers stuck in one step past ``cpu_s + step_grace_s`` (uninterruptible C loops)."""
        limit = self.limits.cpu_s + self.limits.step_grace_s
        while True:
            await asyncio.sleep(min(0.25, limit / 4))
            now = time.monotonic()
            for worker in list(self._workers):
                # Interpreter start-up (slow on a loaded machine) is not the workflow's CPU time.
                allowed = limit if worker.answered else limit + _STARTUP_GRACE_S
                if worker.fifo and now - worker.head_since > allowed:
                    worker.kill(f"no answer within {limit:.1f}s (CPU limit)", culprit_kind="timeout")
