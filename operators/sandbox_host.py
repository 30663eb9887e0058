"""Host side of one sandbox worker process: framing, sequence checks, operator dispatch, killing.

Everything a worker sends is untrusted. A frame must be ``[kind, seq, exec_id, ...]`` with ``seq``
equal to the oldest unanswered host message and ``exec_id`` the execution that message was for;
sizes are capped; types are checked. Anything else kills the worker (``protocol violation``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import types
from collections import deque
from typing import Any

from operators.base import InfrastructureError, OperatorError
from operators.sandbox_state import Execution, Limits, WorkerOwner

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_worker.py")
"""Path of the worker program (run with ``python -I``: nothing of the project is importable)."""

_ERROR_KINDS = frozenset({"timeout", "memory", "output_limit", "crash", "operator_error"})


_ENCODE = json.JSONEncoder(separators=(",", ":"), default=str).encode  # one encoder, not one per frame
_DECODE = json.JSONDecoder().decode


def _frame(obj: Any) -> bytes:
    data = _ENCODE(obj).encode("utf-8", "surrogatepass")
    return len(data).to_bytes(4, "big") + data


@types.coroutine
def _resume(coro, pending):
    """Continue a coroutine that already yielded ``pending`` once (the synchronous fast path missed)."""
    while True:
        try:
            sent = yield pending
        except BaseException as exc:  # noqa: BLE001 - forward cancellation and errors into the operator
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                pending = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _finish_op(coro, pending):
    return await _resume(coro, pending)


class WorkerHandle:
    """One worker process plus the executions it holds; owned by a :class:`Sandbox`."""

    def __init__(self, sandbox: WorkerOwner, loop: asyncio.AbstractEventLoop, tmp: str, limits: Limits):
        self.sandbox, self.loop, self.limits = sandbox, loop, limits
        workdir = os.path.join(tmp, f"w{id(self):x}")
        os.makedirs(workdir, exist_ok=True)
        config = json.dumps({"memory_bytes": limits.memory_mb * 1024 * 1024})
        self.proc = subprocess.Popen(
            [sys.executable, "-I", WORKER_SCRIPT, config],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if not os.environ.get("WORKFLOW_RL_SANDBOX_DEBUG") else None,
            cwd=workdir,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            start_new_session=True,  # Ctrl-C in the host's terminal does not reach the worker
            close_fds=True,
        )
        self.fd_w, self.fd_r = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self.fd_w, False)
        os.set_blocking(self.fd_r, False)
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.flush_scheduled = False
        self.writer_added = False
        self.fifo: deque[tuple[int, Execution | None, int]] = deque()  # (seq, exec, epoch) awaiting answers
        self.head_since = time.monotonic()
        self.seq = 0
        self.live: dict[int, Execution] = {}
        self.started = 0
        self.retiring = False
        self.dead = False
        self.answered = False  # until the first answer, the worker may still be starting up
        loop.add_reader(self.fd_r, self._on_readable)

    # ------------------------------------------------------------------ sending

    def _send(self, frame: list, ex: Execution | None) -> None:
        """Queue one frame; a value JSON cannot carry fails ``ex`` (never the event loop)."""
        frame[1] = self.seq
        try:
            data = _frame(frame)
        except (TypeError, ValueError, RecursionError) as exc:
            if ex is not None:
                self.sandbox.finish(ex, None, "crash", f"cannot send to the worker: {type(exc).__name__}: {exc}")
                if frame[0] == "r":
                    self.cancel_exec(ex)
            return
        if not self.fifo:
            self.head_since = time.monotonic()
        self.fifo.append((self.seq, ex, ex.epoch if ex is not None else -1))
        self.seq += 1
        self.wbuf += data
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)  # coalesce all frames of this loop iteration

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.dead or not self.wbuf:
            return
        try:
            written = os.write(self.fd_w, self.wbuf)
        except BlockingIOError:
            written = 0
        except OSError:
            self.kill("worker pipe closed", culprit_kind="crash")
            return
        del self.wbuf[:written]
        if self.wbuf and not self.writer_added:
            self.loop.add_writer(self.fd_w, self._on_writable)
            self.writer_added = True

    def _on_writable(self) -> None:
        self.loop.remove_writer(self.fd_w)
        self.writer_added = False
        self._flush()

    def start_exec(self, ex: Execution) -> None:
        """Send an execution's start message."""
        self.live[ex.id] = ex
        self.started += 1
        if self.started >= self.limits.max_execs_per_worker:
            self.retiring = True
        self._send(["s", 0, ex.id, ex.code, ex.problem, self.limits.cpu_s, self.limits.output_bytes], ex)

    def cancel_exec(self, ex: Execution) -> None:
        """Ask the worker to drop an execution the host already resolved."""
        self._send(["c", 0, ex.id], None)

    def is_running(self, ex: Execution) -> bool:
        """True when the worker is (as far as the host knows) executing ``ex``'s code right now."""
        return bool(self.fifo) and self.fifo[0][1] is ex

    # ------------------------------------------------------------------ receiving

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd_r, 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            code = self.proc.poll()
            self.kill(f"worker exited (status {code})", culprit_kind="crash")
            return
        self.rbuf += data
        buf, pos, cap = self.rbuf, 0, self.limits.message_bytes
        while len(buf) - pos >= 4:
            size = int.from_bytes(buf[pos : pos + 4], "big")
            if size > cap:
                self.kill(f"protocol violation: frame of {size} bytes", culprit_kind="output_limit")
                return
            if len(buf) - pos - 4 < size:
                break
            payload = bytes(buf[pos + 4 : pos + 4 + size])
            pos += 4 + size
            try:
                handled = self._on_frame(payload)
            except Exception as exc:  # noqa: BLE001 - a host bug must not wedge the worker's executions
                self.kill(f"host error handling a frame: {type(exc).__name__}: {exc}", culprit_kind="crash")
                return
            if not handled or self.dead:
                return
        del buf[:pos]

    def _on_frame(self, payload: bytes) -> bool:
        try:
            msg = _DECODE(payload.decode("utf-8", "surrogatepass"))
            kind, seq, exec_id = msg[0], msg[1], msg[2]
        except (ValueError, TypeError, IndexError, KeyError, RecursionError, UnicodeDecodeError):
            self.kill("protocol violation: malformed frame", culprit_kind="crash")
            return False
        if not self.fifo or type(seq) is not int or seq != self.fifo[0][0]:
            self.kill(f"protocol violation: unexpected sequence number {seq!r}", culprit_kind="crash")
            return False
        _, ex, epoch = self.fifo[0]
        if exec_id != (ex.id if ex is not None else exec_id):
            self.kill("protocol violation: answer for the wrong execution", culprit_kind="crash")
            return False
        self.fifo.popleft()
        self.head_since = time.monotonic()
        self.answered = True
        if ex is None:  # answer to a cancel
            return True
        if ex.future.done() or epoch != ex.epoch:
            return True  # stale: the host already resolved or restarted this execution
        sandbox = self.sandbox
        if kind == "done" and len(msg) == 4 and isinstance(msg[3], str):
            sandbox.finish(ex, msg[3], None, None)
        elif kind == "err" and len(msg) == 5 and msg[3] in _ERROR_KINDS and isinstance(msg[4], str):
            sandbox.finish(ex, None, msg[3], msg[4][:4000])
        elif (
            kind == "call"
            and len(msg) == 6
            and isinstance(msg[3], str)
            and isinstance(msg[4], list)
            and isinstance(msg[5], dict)
        ):
            self._call(ex, msg[3], msg[4], msg[5])
        else:
            self.kill("protocol violation: malformed message", culprit_kind="crash", culprit=ex)
            return False
        return True

    # ------------------------------------------------------------------ operators

    def _call(self, ex: Execution, name: str, args: list, kwargs: dict) -> None:
        ex.op_calls += 1
        if ex.op_calls > self.limits.max_op_calls:
            self.sandbox.finish(ex, None, "timeout", f"more than max_op_calls={self.limits.max_op_calls} operator calls")
            self.cancel_exec(ex)
            return
        op = self.sandbox.operators.get(name)
        if op is None:  # the validator checked names; a worker asking otherwise is compromised
            self.kill(f"protocol violation: unknown operator {name!r}", culprit_kind="crash", culprit=ex)
            return
        ex.ctx.usage.op_calls += 1
        try:
            coro = op.fn(ex.ctx, *args, **kwargs)
            if op.kind == "llm":
                # LLM clients (httpx/anyio) need asyncio.current_task() from the very first step.
                task = self.loop.create_task(coro)
            else:
                # Tools: run the first step synchronously (most finish without suspending); a
                # task for every call costs about a third of the sandbox's throughput on calc.
                pending = coro.send(None)
                task = self.loop.create_task(_finish_op(coro, pending))
        except StopIteration as stop:
            self._reply(ex, ex.epoch, True, stop.value)
            return
        except Exception as exc:  # noqa: BLE001 - any operator failure goes back to the workflow
            self._op_failed(ex, ex.epoch, exc)
            return
        ex.tasks.add(task)
        epoch = ex.epoch
        task.add_done_callback(lambda t: self._on_op_done(ex, epoch, t))

    def _on_op_done(self, ex: Execution, epoch: int, task: asyncio.Task) -> None:
        ex.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self._reply(ex, epoch, True, task.result())
        else:
            self._op_failed(ex, epoch, exc)

    def _op_failed(self, ex: Execution, epoch: int, exc: BaseException) -> None:
        if not isinstance(exc, InfrastructureError):
            self._reply(ex, epoch, False, _op_message(exc))
        elif not self.dead and epoch == ex.epoch and ex.worker is self and not ex.future.done():
            # An outage is not the workflow's fault: end the execution with the error itself (raised
            # by Sandbox.run) instead of letting the workflow see an operator error and score 0.
            self.cancel_exec(ex)  # the worker drops the suspended workflow coroutine
            self.sandbox.abort(ex, exc)

    def _reply(self, ex: Execution, epoch: int, ok: bool, value: Any) -> None:
        if self.dead or ex.future.done() or epoch != ex.epoch or ex.worker is not self:
            return
        if ok and not isinstance(value, (str, int, float, bool, type(None), list, dict)):
            value = str(value) if not isinstance(value, tuple) else list(value)
        self._send(["r", 0, ex.id, ok, value], ex)

    # ------------------------------------------------------------------ killing

    def kill(self, message: str, culprit_kind: str, replace: bool = True, culprit: Execution | None = None) -> None:
        """Kill the process; the running execution fails with ``culprit_kind``, the others restart.

        The culprit is ``culprit`` when given, else the execution of the oldest unanswered message.
        """
        if self.dead:
            return
        self.dead = True
        try:
            self.loop.remove_reader(self.fd_r)
            if self.writer_added:
                self.loop.remove_writer(self.fd_w)
        except (RuntimeError, ValueError):  # loop already closed
            pass
        try:
            os.killpg(self.proc.pid, 9)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        if culprit is None and self.fifo:
            culprit = self.fifo[0][1]
        self.fifo.clear()
        sandbox = self.sandbox
        if replace:
            sandbox.replace_worker(self)
        if culprit is not None and not culprit.future.done():
            sandbox.finish(culprit, None, culprit_kind, message)
        for ex in list(self.live.values()):
            if ex is not culprit:
                if replace:
                    sandbox.restart_or_fail(ex, f"worker lost: {message}")
                else:
                    sandbox.finish(ex, None, "crash", message)
        self.live.clear()


def _op_message(exc: BaseException) -> str:
    if isinstance(exc, OperatorError):
        return str(exc)[:4000]
    return f"{type(exc).__name__}: {exc}"[:4000]
