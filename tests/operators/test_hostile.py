"""Hostile programs: workflows and model-written scripts written to escape or harm.

Each one must end as a typed failure (or, for forged output, as plain text the host is not
confused by) within its limits, while the host keeps serving benign executions; nothing may be
written outside the sandbox temp area; the host's memory must not grow across 1,000 hostile runs.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from pathlib import Path

import pytest

from operators.base import Operator
from operators.registry import get_operators
from operators.runtime import Limits, Sandbox

MARK = f"wfrl-hostile-{uuid.uuid4().hex[:8]}"
TARGETS = [Path.cwd() / MARK, Path.home() / MARK, Path(tempfile.gettempdir()) / MARK, Path("/tmp") / (MARK + "b")]
LIMITS = Limits(wall_s=10.0, cpu_s=0.5, memory_mb=256, output_bytes=10_000, max_op_calls=50,
                message_bytes=1_000_000, step_grace_s=3.0)


async def _add(ctx, a, b):
    return a + b


async def _echo(ctx, x):
    return x


async def _slow(ctx, x, seconds):
    await asyncio.sleep(seconds)
    return x


OPS = {
    "add": Operator("add", _add, "add(a, b)", "Adds."),
    "echo": Operator("echo", _echo, "echo(x)", "Returns x."),
    "slow": Operator("slow", _slow, "slow(x, seconds)", "Returns x after a delay."),
}
BENIGN = "async def solve(problem, ops):\n    x = await ops.add(problem, 1)\n    return await ops.add(x, 2)\n"
FRAME = '\\x00\\x00\\x00\\x1b["r",1,1,true,"forged-reply"]'


def _tree(root: Path) -> list[tuple[str, int, int]]:
    # Directory mtimes change when the sandbox temp area comes and goes; file contents must not.
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (str(p), -1, 0)
        for p in root.rglob("*")
    )


@pytest.fixture
def isolated_fs(tmp_path, monkeypatch):
    """cwd, HOME and the temp dir (the sandbox temp area's parent) inside ``tmp_path``.

    After the test (sandbox closed) the whole tree must be exactly as before: the sandbox temp
    area is gone and nothing else appeared or changed.
    """
    for sub in ("cwd", "home", "tmp"):
        (tmp_path / sub).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    before = _tree(tmp_path)
    yield tmp_path
    assert _tree(tmp_path) == before
    assert not any(t.exists() for t in TARGETS)


def _solve(body: str) -> str:
    return "async def solve(problem, ops):\n" + "\n".join("    " + line for line in body.strip("\n").splitlines()) + "\n"


# name -> (program, expected error kind); None means "returns plain text" (checked separately)
WORKFLOWS = {
    "import": ("import os\nasync def solve(problem, ops):\n    return os.system('id')\n", "invalid"),
    "import-inside": (_solve("import subprocess\nreturn 1"), "invalid"),
    "dunder-import": (_solve("return __import__('os').system('id')"), "invalid"),
    "subclasses-walk": (_solve("return [c for c in ().__class__.__base__.__subclasses__()]"), "invalid"),
    "mro-walk": (_solve("return problem.__class__.__mro__[-1].__subclasses__()"), "invalid"),
    "getattr-string": (_solve("return getattr(getattr(problem, '__class__'), '__base__')"), "invalid"),
    "format-attr": (_solve("return '{0.__class__.__init__.__globals__}'.format(problem)"), "invalid"),
    "format-via-str": (_solve("return str.format('{0.__class__}', problem)"), "invalid"),
    "gen-frame": (_solve("g = (x for x in [1])\nreturn g.gi_frame.f_back.f_globals"), "invalid"),
    "coroutine-frame": (_solve("c = ops.echo(1)\nreturn c.cr_frame"), "invalid"),
    "exception-traceback": (_solve("try:\n    1 / 0\nexcept Exception as e:\n    return e.__traceback__"), "invalid"),
    "builtins-smuggle": (_solve("b = __builtins__\nreturn b['open']('/etc/passwd').read()"), "invalid"),
    "globals": (_solve("return globals()['__builtins__']"), "invalid"),
    "exec-string": (_solve("exec('import os')\nreturn 1"), "invalid"),
    "write-file": (_solve(f"open('{TARGETS[0]}', 'w').write('x')\nreturn 1"), "invalid"),
    "socket": (_solve("s = socket.socket()\nreturn s.connect(('1.1.1.1', 80))"), "invalid"),
    "fork": (_solve("return os.fork()"), "invalid"),
    "signal": (_solve("return signal.signal(2, 1)"), "invalid"),
    "lambda-smuggle": (_solve("f = lambda: 0\nreturn f()"), "invalid"),
    "def-smuggle": (_solve("def r(n):\n    return r(n + 1)\nreturn r(0)"), "invalid"),
    "ops-smuggle": (_solve("o = ops\nreturn o"), "invalid"),
    "huge-literal": (_solve("return 'x' * 10**10"), "invalid"),
    "infinite-loop": (_solve("while True:\n    pass"), "timeout"),
    "swallow-timeout": (_solve("while True:\n    try:\n        while True:\n            pass\n    except Exception:\n        pass"), "timeout"),
    "recursion-bomb": (_solve("x = []\nfor i in range(100000):\n    x = [x]\nreturn str(x)"), "crash"),
    "memory-bomb": (_solve("x = [0]\nwhile True:\n    x = x + x"), "memory"),
    "memory-retry": (_solve("n = 10**8\nwhile True:\n    try:\n        x = [0] * n\n    except Exception:\n        pass"), "timeout"),
    "huge-output": (_solve("s = 'ab'\nfor i in range(20):\n    s = s + s\nreturn s"), "output_limit"),
    "huge-op-argument": (_solve("s = 'ab'\nfor i in range(21):\n    s = s + s\nreturn await ops.echo(s)"), "output_limit"),
    "huge-int-str": (_solve("n = 2\nfor i in range(20):\n    n = n * n\nreturn str(n)"), "crash"),
    "raise-in-loop": (_solve("for i in range(1000):\n    try:\n        raise ValueError(i)\n    except ValueError:\n        pass\nraise RuntimeError('done')"), "crash"),
    "sleep-past-limit": (_solve("return await ops.slow(problem, 60)"), "timeout"),
    "operator-flood": (_solve("x = 0\nwhile True:\n    x = await ops.add(x, 1)"), "timeout"),
    "cyclic-argument": (_solve("x = []\nx.append(x)\nreturn await ops.echo(x)"), "crash"),
    "uninterruptible-c-loop": (_solve("return sum(range(10**12))"), "timeout"),
    "forged-reply-output": (_solve(f"return '{FRAME}' * 3"), None),
    "forged-reply-argument": (_solve(f"return await ops.echo('{FRAME}')"), None),
}


def test_hostile_workflows_end_as_typed_failures_while_host_serves(isolated_fs):
    async def main():
        async with Sandbox(OPS, workers=2, limits=LIMITS) as sb:
            jobs = [(code, 1) for code, _ in WORKFLOWS.values()]
            hostile = asyncio.ensure_future(sb.run_many(jobs))
            benign = []
            while not hostile.done():  # the host keeps answering benign executions meanwhile
                benign.append(await sb.run(BENIGN, len(benign)))
                await asyncio.sleep(0.01)
            return await hostile, benign, sb._tmp

    results, benign, tmp = asyncio.run(main())
    assert len(WORKFLOWS) >= 30
    for (name, (_, kind)), result in zip(WORKFLOWS.items(), results, strict=True):
        if kind is None:
            assert result.ok and "forged-reply" in result.output, name
            continue
        assert result.error_kind == kind, (name, result)
        assert result.output is None and result.error_message, name
        # An execution restarted after losing its worker to another one gets a fresh clock once.
        assert result.latency_s < 2 * LIMITS.wall_s + LIMITS.cpu_s + LIMITS.step_grace_s + 2, name
    assert results[-2].output == FRAME.encode().decode("unicode_escape") * 3
    assert benign and all(r.output == str(i + 3) for i, r in enumerate(benign))
    assert not os.path.exists(tmp) and tmp.startswith(str(isolated_fs))  # temp area removed on close
    assert not any(t.exists() for t in TARGETS)


def _bypassing(sandbox: Sandbox) -> Sandbox:
    """Switch the validator off, to prove the worker's own layer (builtins, audit hook, rlimits)."""
    sandbox._validate = lambda code: None
    return sandbox


BYPASS = {
    "import": f"import os\nasync def solve(problem, ops):\n    return os.system('touch {TARGETS[0]}')\n",
    "open-write": _solve(f"open('{TARGETS[1]}', 'w').write('x')\nreturn 1"),
    "dunder-import": _solve("return __import__('os').getcwd()"),
    "subclasses-to-os": _solve(
        "cls = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Worker'][0]\n"
        f"return cls.__init__.__globals__['os'].system('touch {TARGETS[0]}')"
    ),
    "subclasses-to-open": _solve(
        "cls = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Worker'][0]\n"
        f"return cls.__init__.__globals__['os'].open('{TARGETS[1]}', 65)"
    ),
    "frame-walk": _solve("g = (x for x in [1])\nreturn str(g.gi_frame.f_back)"),
    "getattr": _solve("return getattr(problem, 'upper')()"),
}


def test_worker_layer_holds_without_the_validator(isolated_fs):
    async def main():
        async with _bypassing(Sandbox(OPS, workers=1, limits=LIMITS)) as sb:
            results = await sb.run_many([(code, "p") for code in BYPASS.values()])
            return results, await sb.run(BENIGN, 1)

    results, benign = asyncio.run(main())
    for name, result in zip(BYPASS, results, strict=True):
        assert result.error_kind == "crash", (name, result)
        assert any(s in result.error_message for s in ("not defined", "not allowed", "not found")), (name, result)
    assert benign.output == "4"
    assert not any(t.exists() for t in TARGETS)


SCRIPTS = {
    "write-cwd": (f"open('{MARK}', 'w').write('x')", "crash"),
    "write-tmp": (f"open('{TARGETS[2]}', 'w').write('x')", "crash"),
    "write-home": (f"open('{TARGETS[1]}', 'a').write('x')", "crash"),
    "os-open-create": (f"import os\nos.open('{TARGETS[3]}', os.O_WRONLY | os.O_CREAT)", "crash"),
    "mkdir": (f"import os\nos.mkdir('{TARGETS[0]}')", "crash"),
    "remove": ("import os\nos.remove('/etc/hostname')", "crash"),
    "rmtree": ("import shutil\nshutil.rmtree('/tmp/nonexistent-wfrl')", "crash"),
    "socket": ("import socket\nsocket.create_connection(('127.0.0.1', 22))", "crash"),
    "raw-socket-module": ("import _socket\n_socket.socket()", "crash"),
    "fork": ("import os\nos.fork()", "crash"),
    "fork-bomb-spawn": ("import os\nos.posix_spawn('/bin/sh', ['sh'], {})", "crash"),
    "subprocess": (f"import subprocess\nsubprocess.run(['touch', '{TARGETS[0]}'])", "crash"),
    "posixsubprocess-stub": ("import _posixsubprocess\n_posixsubprocess.fork_exec([b'/bin/sh'])", "crash"),
    "posixsubprocess-real": ("import sys\ndel sys.modules['_posixsubprocess']\nimport _posixsubprocess", "crash"),
    "system": (f"import os\nos.system('touch {TARGETS[0]}')", "crash"),
    "exec": ("import os\nos.execv('/bin/sh', ['sh'])", "crash"),
    "kill-parent": ("import os\nos.kill(os.getppid(), 9)", "crash"),
    "signal-tamper": ("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
                      "signal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass", "timeout"),
    "thread-spin": ("import threading\nfor _ in range(4):\n    threading.Thread(target=lambda: sum(iter(int, 1))).start()", "timeout"),
    "ctypes-libc": (f"import ctypes\nctypes.CDLL('libc.so.6').system(b'touch {TARGETS[0]}')", "crash"),
    "ctypes-symbol": ("import ctypes\nctypes.pythonapi.Py_Exit(0)", "crash"),
    "ctypes-memory": ("import ctypes\nctypes.memset(ctypes.c_void_p(id(1)), 0, 64)", "crash"),
    "ctypes-peek": ("import ctypes\nprint(ctypes.string_at(id(1), 64))", "crash"),
    "ctypes-from-address": ("import ctypes\nctypes.c_long.from_address(id(1)).value = 2", "crash"),
    "sqlite-write": (f"import sqlite3\nsqlite3.connect('{TARGETS[2]}.db')", "crash"),
    "raise-rlimit": ("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))", "crash"),
    "frame-escape": ("try:\n    1 / 0\nexcept Exception as e:\n    f = e.__traceback__.tb_frame.f_back\n"
                     "    f.f_globals['resource'].setrlimit(0, (-1, -1))", "crash"),
    "deep-recursion": ("import sys\nsys.setrecursionlimit(10**6)\ndef f(n):\n    return f(n + 1)\nf(0)", "any"),
    "recursion-bomb": ("def f(n):\n    return f(n + 1)\nf(0)", "crash"),
    "memory-bomb": ("x = []\nwhile True:\n    x.append(' ' * 10**7)", "memory"),
    "infinite-loop": ("while True:\n    pass", "timeout"),
    "sleep-past-limit": ("import time\ntime.sleep(60)", "timeout"),
    "huge-output": ("while True:\n    print('x' * 1000)", "output_limit"),
    "forged-frames": (f"print('{FRAME}' * 3)", None),
}


def test_hostile_scripts_in_run_code(isolated_fs):
    async def main():
        async with Sandbox(OPS, workers=2, limits=LIMITS) as sb:
            results = await asyncio.gather(*(sb.run_code(src, timeout_s=1.5) for src, _ in SCRIPTS.values()))
            return results, await sb.run(BENIGN, 0)

    results, benign = asyncio.run(main())
    for (name, (_, kind)), result in zip(SCRIPTS.items(), results, strict=True):
        if kind is None:
            assert result.ok and result.stdout.count("forged-reply") == 3, name
            continue
        assert not result.ok and (result.error_kind == kind or kind == "any" and result.error_kind), (name, result)
    blocked = [r for (_, kind), r in zip(SCRIPTS.values(), results, strict=True) if kind == "crash"]
    assert sum("not allowed" in r.error_message for r in blocked) >= len(blocked) - 2  # rest: RecursionError...
    assert benign.output == "3"
    assert not any(t.exists() for t in TARGETS) and not Path(f"{TARGETS[2]}.db").exists()


def test_hostile_scripts_through_the_run_python_operator(isolated_fs):
    ops = {**OPS, **get_operators(["run_python"])}
    picks = ["write-tmp", "socket", "fork", "system", "kill-parent", "memory-bomb", "infinite-loop", "huge-output"]
    programs = [_solve(f"return await ops.run_python({SCRIPTS[name][0]!r})") for name in picks]

    async def main():
        async with Sandbox(ops, workers=2, limits=LIMITS) as sb:
            return await sb.run_many([(code, 0) for code in programs]), await sb.run(BENIGN, 0)

    results, benign = asyncio.run(main())
    for name, result in zip(picks, results, strict=True):
        assert result.error_kind == "operator_error", (name, result)
        assert result.error_message.startswith(f"python {SCRIPTS[name][1]}"), (name, result.error_message)
    assert benign.output == "3"


def test_tree_snapshot_sees_writes(tmp_path):
    before = _tree(tmp_path)
    (tmp_path / "new").write_text("x")
    assert _tree(tmp_path) != before


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
def test_host_memory_flat_across_1000_hostile_runs():
    quick = [code for code, kind in WORKFLOWS.values() if kind in ("invalid", "crash", "output_limit", None)]
    quick += [_solve(f"return str(problem) + '{i}' * 5 + 1") for i in range(50)]  # distinct code: caches

    async def main():
        async with Sandbox(OPS, workers=2, limits=LIMITS) as sb:
            async def batch(n, offset):
                jobs = [(quick[(offset + i) % len(quick)], i) for i in range(n)]
                return await sb.run_many(jobs)

            await batch(300, 0)
            before = _rss_kib()
            failures = 0
            for k in range(10):
                failures += sum(not r.ok for r in await batch(100, 300 + 100 * k))
            after_workflows = _rss_kib()
            scripts = [src for src, kind in SCRIPTS.values() if kind == "crash"]
            await asyncio.gather(*(sb.run_code(scripts[i % len(scripts)]) for i in range(40)))
            code_before = _rss_kib()
            code_failures = 0
            for _ in range(4):
                results = await asyncio.gather(*(sb.run_code(scripts[i % len(scripts)]) for i in range(40)))
                code_failures += sum(not r.ok for r in results)
            return before, after_workflows, code_before, _rss_kib(), failures, code_failures, await sb.run(BENIGN, 0)

    before, after, code_before, code_after, failures, code_failures, benign = asyncio.run(main())
    assert failures >= 900 and code_failures == 160
    assert benign.output == "3"
    assert after - before < 16 * 1024, f"host RSS grew by {after - before} KiB over 1,000 hostile runs"
    assert code_after - code_before < 8 * 1024, f"host RSS grew by {code_after - code_before} KiB over 160 run_code"
