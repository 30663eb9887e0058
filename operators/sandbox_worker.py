"""Sandbox worker process: runs validated workflow programs; operator calls go back to the host.

Started by :mod:`operators.runtime` as ``python -I sandbox_worker.py <limits-json>`` in an empty
temp directory. It uses the standard library only (no project import, nothing on ``sys.path`` from
the project) and, once started, locks itself down:

* rlimits: address space (memory), FSIZE=0 (no file grows), NOFILE small, CORE=0, NPROC=0;
* an audit hook that refuses every audited action except the ``exec``/``compile`` the loop itself
  does: ``open``, imports, ``os.*`` (fork/exec/kill/remove...), ``socket.*``, ``subprocess.*``,
  ``ctypes.*``, frame/code introspection events, ...;
* workflow code runs with ``__builtins__`` restricted to the validator's allow-list.

Protocol (one frame = 4-byte big-endian length + JSON array), on the original stdin/stdout fds;
fds 0/1 are then pointed at /dev/null so that nothing else can write to the channel by accident.
Every host message gets exactly one answer, in order, echoing the message's sequence number::

    host -> worker  ["s", seq, exec_id, code, problem, cpu_s, max_output]   start an execution
                    ["r", seq, exec_id, ok, value]                           operator reply
                    ["c", seq, exec_id]                                      cancel
    worker -> host  ["call", seq, exec_id, op, args, kwargs]
                    ["done", seq, exec_id, output]
                    ["err", seq, exec_id, kind, message]

Each *step* (the code that runs between two operator calls) runs under an ITIMER_PROF alarm set
to the execution's remaining CPU budget; the alarm raises a BaseException that workflows cannot
catch (the validator forbids bare ``except``/``BaseException``/``finally``). Computations the
alarm cannot interrupt (a single huge C-level operation) are caught by the host's watchdog,
which kills the whole worker.
"""

import builtins
import json
import os
import resource
import signal
import sys
import time

_SAFE = (
    "len range str int float bool list dict set tuple min max sum sorted enumerate zip abs round "
    "any all isinstance reversed repr divmod pow chr ord hash frozenset "
    "Exception ValueError TypeError KeyError IndexError ZeroDivisionError ArithmeticError "
    "LookupError RuntimeError AssertionError OverflowError"
).split()


class StepTimeout(BaseException):
    """Raised by the CPU alarm inside a workflow step."""


class OperatorError(Exception):
    """An operator failed on the host; workflows may catch it with ``except Exception``."""


class _Call:
    """What ``ops.<name>(...)`` returns: awaiting it yields the request to the driving loop."""

    __slots__ = ("op", "args", "kwargs")

    def __init__(self, op, args, kwargs):
        self.op, self.args, self.kwargs = op, args, kwargs

    def __await__(self):
        return (yield self)


class _Ops:
    """The ``ops`` handle: one bound callable per operator name."""

    __slots__ = ("_names",)

    def __init__(self, names):
        self._names = names

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: _Call(name, args, kwargs)


_armed = False


def _on_alarm(signum, frame):
    if _armed:
        raise StepTimeout()


class Worker:
    """State of one worker: live executions (coroutines) and the compiled-code cache."""

    def __init__(self, limits):
        self.limits = limits
        self.live = {}  # exec_id -> [coroutine, cpu_left, max_output]
        self.code_cache = {}
        self.builtins = {name: getattr(builtins, name) for name in _SAFE}
        self.builtins["OperatorError"] = OperatorError
        self.ops = _Ops(())

    def handle(self, msg):
        """Process one host message and return the answer frame (a list)."""
        kind, seq, exec_id = msg[0], msg[1], msg[2]
        if kind == "s":
            code, problem, cpu_s, max_output = msg[3], msg[4], msg[5], msg[6]
            try:
                compiled = self.code_cache.get(code)
                if compiled is None:
                    if len(self.code_cache) > 4096:
                        self.code_cache.clear()
                    compiled = self.code_cache[code] = compile(code, "<workflow>", "exec")
                env = {"__builtins__": self.builtins}
                exec(compiled, env)
                coro = env["solve"](problem, self.ops)
            except MemoryError:
                return ["err", seq, exec_id, "memory", "MemoryError while loading the program"]
            except Exception as exc:  # noqa: BLE001 - any load failure is the program's fault
                return ["err", seq, exec_id, "crash", _describe(exc)]
            self.live[exec_id] = [coro, float(cpu_s), int(max_output)]
            return self.step(seq, exec_id, None, None)
        if kind == "r":
            if exec_id not in self.live:
                return ["err", seq, exec_id, "crash", "reply for an unknown execution"]
            ok, value = msg[3], msg[4]
            if ok:
                return self.step(seq, exec_id, value, None)
            return self.step(seq, exec_id, None, OperatorError(str(value)))
        if kind == "c":
            entry = self.live.pop(exec_id, None)
            if entry is not None:
                entry[0].close()
            return ["err", seq, exec_id, "timeout", "cancelled by the host"]
        return ["err", seq, exec_id, "crash", f"unknown message kind {kind!r}"]

    def step(self, seq, exec_id, value, error):
        """Run one execution until its next operator call or its end."""
        global _armed
        entry = self.live[exec_id]
        coro, cpu_left = entry[0], entry[1]
        if cpu_left <= 0:
            return self.finish(exec_id, ["err", seq, exec_id, "timeout", "CPU time limit exceeded"])
        t0 = time.process_time()
        signal.setitimer(signal.ITIMER_PROF, cpu_left)
        _armed = True
        try:
            try:
                request = coro.throw(error) if error is not None else coro.send(value)
            finally:
                _armed = False
            signal.setitimer(signal.ITIMER_PROF, 0)
            entry[1] = cpu_left - (time.process_time() - t0)
            if type(request) is not _Call:
                return self.finish(exec_id, ["err", seq, exec_id, "crash", "awaited something other than an operator"])
            return ["call", seq, exec_id, request.op, list(request.args), request.kwargs]
        except StopIteration as stop:
            signal.setitimer(signal.ITIMER_PROF, 0)
            try:
                output = "" if stop.value is None else str(stop.value)
            except MemoryError:
                return self.finish(exec_id, ["err", seq, exec_id, "memory", "MemoryError converting the output"])
            except Exception as exc:  # noqa: BLE001
                return self.finish(exec_id, ["err", seq, exec_id, "crash", _describe(exc)])
            if len(output) > entry[2]:
                return self.finish(
                    exec_id, ["err", seq, exec_id, "output_limit", f"output of {len(output)} chars > {entry[2]}"]
                )
            return self.finish(exec_id, ["done", seq, exec_id, output])
        except StepTimeout:
            signal.setitimer(signal.ITIMER_PROF, 0)
            return self.finish(exec_id, ["err", seq, exec_id, "timeout", "CPU time limit exceeded"])
        except MemoryError:
            signal.setitimer(signal.ITIMER_PROF, 0)
            return self.finish(exec_id, ["err", seq, exec_id, "memory", "memory limit exceeded"])
        except OperatorError as exc:
            signal.setitimer(signal.ITIMER_PROF, 0)
            return self.finish(exec_id, ["err", seq, exec_id, "operator_error", str(exc)[:2000]])
        except Exception as exc:  # noqa: BLE001 - the workflow raised: a typed crash
            signal.setitimer(signal.ITIMER_PROF, 0)
            return self.finish(exec_id, ["err", seq, exec_id, "crash", _describe(exc)])

    def finish(self, exec_id, frame):
        entry = self.live.pop(exec_id, None)
        if entry is not None:
            entry[0].close()
        return frame


def _describe(exc):
    try:
        return f"{type(exc).__name__}: {exc}"[:2000]
    except Exception:  # noqa: BLE001 - str() of a hostile exception may itself fail
        return type(exc).__name__


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def _encode(frame):
    try:
        data = _ENCODER.encode(frame).encode("utf-8", "surrogatepass")
    except (ValueError, TypeError, MemoryError, RecursionError) as exc:
        # The workflow passed something JSON cannot carry (cyclic list, ...): report, keep serving.
        data = json.dumps(["err", frame[1], frame[2], "crash", f"unserialisable value: {type(exc).__name__}"]).encode()
    return len(data).to_bytes(4, "big") + data


def _lock_down(limits):
    mem = int(limits.get("memory_bytes") or 0)
    if mem:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    for limit, value in ((resource.RLIMIT_FSIZE, 0), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, 0)):
        try:
            resource.setrlimit(limit, (value, value))
        except (ValueError, OSError):
            pass
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
    except (ValueError, OSError):
        pass
    allowed = frozenset({"exec", "compile"})

    def hook(event, args):
        if event not in allowed:
            raise RuntimeError(f"sandbox: {event} is not allowed")

    sys.addaudithook(hook)


def main():
    limits = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    fd_in, fd_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    signal.signal(signal.SIGPROF, _on_alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host stops us; Ctrl-C belongs to the host
    sys.setrecursionlimit(400)
    worker = Worker(limits)
    _lock_down(limits)
    buf = bytearray()
    loads, read, write = json.loads, os.read, os.write
    while True:
        data = read(fd_in, 1 << 20)
        if not data:
            return
        buf += data
        out = []
        pos = 0
        while len(buf) - pos >= 4:
            size = int.from_bytes(buf[pos : pos + 4], "big")
            if len(buf) - pos - 4 < size:
                break
            msg = loads(buf[pos + 4 : pos + 4 + size])
            pos += 4 + size
            if out:
                # Answers go out before the next step runs: a long step must not hold back earlier
                # answers, or the host's watchdog would blame the wrong execution.
                _write_all(write, fd_out, b"".join(out))
                out.clear()
            out.append(_encode(worker.handle(msg)))
        del buf[:pos]
        if out:
            _write_all(write, fd_out, b"".join(out))


def _write_all(write, fd, data):
    view = memoryview(data)
    while view:
        view = view[write(fd, view) :]


if __name__ == "__main__":
    main()
