"""Host side of ``Sandbox.run_code``: one fresh, limited process per untrusted script.

A fresh process per call (not a reused worker) because model-written code is not validated: it
could tamper with any state a reused interpreter keeps. Startup costs ~20-40 ms, small next to
the LLM call that wrote the code.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile

from operators.base import CodeResult
from operators.sandbox_state import Limits

EXEC_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_exec.py")
"""Path of the child program (run with ``python -I``)."""


async def _read_capped(stream: asyncio.StreamReader, cap: int, over: asyncio.Event) -> bytes:
    chunks, total = [], 0
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > cap:
            over.set()
            chunks.append(chunk[: max(0, cap - (total - len(chunk)))])
            # Read on (discarding) to EOF, which comes once the caller kills the process: a pipe left
            # unread stays paused, so the process transport never closes and leaks until garbage
            # collection, after its event loop may be gone ("Event loop is closed").
            while await stream.read(65536):
                pass
            return b"".join(chunks)
        chunks.append(chunk)


async def run_code_process(source: str, stdin: str, timeout_s: float, limits: Limits, tmp_base: str) -> CodeResult:
    """Run ``source`` as a script; returns a :class:`CodeResult` (never raises for script faults)."""
    if not isinstance(source, str) or not isinstance(stdin, str):
        return CodeResult(False, error_kind="crash", error_message="source and stdin must be str")
    timeout_s = max(0.05, float(timeout_s))
    workdir = tempfile.mkdtemp(prefix="code-", dir=tmp_base)
    config = json.dumps({"cpu_s": min(timeout_s, limits.cpu_s * 5), "memory_bytes": limits.memory_mb * 1024 * 1024})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", EXEC_SCRIPT, config,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=workdir, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, start_new_session=True,
    )
    over = asyncio.Event()
    cap = limits.output_bytes
    try:
        payload = json.dumps({"source": source, "stdin": stdin}).encode("utf-8", "surrogatepass")
        proc.stdin.write(payload)
        proc.stdin.close()
        out_task = asyncio.ensure_future(_read_capped(proc.stdout, cap, over))
        err_task = asyncio.ensure_future(_read_capped(proc.stderr, cap, over))
        over_task = asyncio.ensure_future(over.wait())
        both = asyncio.gather(out_task, err_task, proc.wait())
        done, _ = await asyncio.wait({both, over_task}, timeout=timeout_s + 1.0, return_when=asyncio.FIRST_COMPLETED)
        timed_out = not done
        if timed_out or over.is_set():
            _kill(proc)
        await asyncio.wait({both}, timeout=5)
        over_task.cancel()
        stdout = out_task.result() if out_task.done() else b""
        stderr = err_task.result() if err_task.done() else b""
        status = proc.returncode
    except asyncio.CancelledError:
        _kill(proc)
        raise
    finally:
        if proc.returncode is None:
            _kill(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    out, err = stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")
    if over.is_set():
        return CodeResult(False, out, err, "output_limit", f"output larger than {cap} bytes")
    if timed_out or status in (-signal.SIGXCPU, -signal.SIGKILL):
        return CodeResult(False, out, err, "timeout", f"time limit of {timeout_s}s exceeded")
    if status == 3:
        return CodeResult(False, out, err, "memory", "memory limit exceeded")
    if status != 0:
        last = err.strip().splitlines()[-1] if err.strip() else f"exit status {status}"
        return CodeResult(False, out, err, "crash", last[:2000])
    return CodeResult(True, out, err)


def _kill(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
