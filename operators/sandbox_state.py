"""The state the sandbox and its worker handles share: resource limits, one execution, the owner.

It sits below both :mod:`operators.runtime` (the :class:`~operators.runtime.Sandbox`) and
:mod:`operators.sandbox_host` (the worker handles), so neither imports the other's internals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from operators.base import OpContext, Operator
from operators.sandbox_clock import ExecClock


@dataclass(frozen=True)
class Limits:
    """Resource limits of one execution (and of each worker process)."""

    wall_s: float = 60.0
    """Wall-clock limit of the workflow's own time in one execution: its code and its operator calls,
    except the time its LLM requests wait (for a slot, the server, retries) and its ``run_code``
    calls wait for a code slot, which the clock does not count. An execution restarted because
    another one killed its worker gets a fresh clock once, so at most about twice this in all."""
    cpu_s: float = 2.0
    """CPU seconds the workflow code itself may use in one execution (operators run on the host)."""
    memory_mb: int = 512
    """Address-space limit (RLIMIT_AS) of each worker / run_code process, in MiB."""
    output_bytes: int = 1_000_000
    """Largest workflow output (chars) and run_code stdout+stderr (bytes)."""
    max_op_calls: int = 500
    """Most operator calls one execution may make (exceeding it is a ``timeout``: a budget limit)."""
    message_bytes: int = 16_000_000
    """Largest frame a worker may send (bigger is a protocol violation: the worker is killed)."""
    step_grace_s: float = 3.0
    """Extra wall time the host waits for a busy worker beyond ``cpu_s`` before killing it."""
    max_execs_per_worker: int = 50_000
    """Recycle a worker after this many executions (bounds any slow leak inside it)."""

    def __post_init__(self):
        for name in ("wall_s", "cpu_s", "memory_mb", "output_bytes", "max_op_calls", "message_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be > 0, got {getattr(self, name)!r}")


class Execution:
    """Host-side state of one execution (the sandbox and its worker handles share it)."""

    __slots__ = ("id", "code", "problem", "ctx", "future", "worker", "epoch", "op_calls", "clock",
                 "restarts", "tasks", "started")

    def __init__(self, exec_id: int, code: str, problem: Any, future: asyncio.Future, clock: ExecClock):
        self.id, self.code, self.problem, self.future, self.clock = exec_id, code, problem, future, clock
        self.ctx: OpContext | None = None
        # The WorkerHandle running it (typed loosely: operators.sandbox_host imports this module).
        self.worker: Any = None
        self.epoch = 0  # bumped on restart so that stale replies are dropped
        self.op_calls = 0
        self.restarts = 0
        self.tasks: set[asyncio.Task] = set()
        self.started = False


class WorkerOwner(Protocol):
    """What a worker handle needs from the sandbox that owns it."""

    operators: Mapping[str, Operator]

    def finish(self, ex: Execution, output: str | None, kind: str | None, message: str | None) -> None:
        """Settle ``ex`` with its output or its error kind and message."""

    def abort(self, ex: Execution, error: BaseException) -> None:
        """Settle ``ex`` by raising ``error`` (an infrastructure failure) to its caller."""

    def replace_worker(self, worker: Any) -> None:
        """Swap a dead worker for a fresh one."""

    def restart_or_fail(self, ex: Execution, message: str) -> None:
        """Rerun ``ex`` on another worker after losing its own, or fail it past the restart limit."""
