"""OpenAI-compatible client against a real local HTTP server (workflow_rl.llm.testing)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from operators.base import LLMRequest
from workflow_rl.errors import WorkflowRLError
from workflow_rl.llm import (
    OpenAICompatibleClient,
    PriceTable,
    ResponseCache,
    make_executor,
    parse_executor_spec,
)
from workflow_rl.llm.openai import LLMEndpointError
from workflow_rl.llm.testing import ScriptedOpenAIServer, ScriptedReply

SECRET = "sk-test-SECRET-4242"


@pytest.fixture
def server():
    with ScriptedOpenAIServer() as srv:
        yield srv


def client_for(srv: ScriptedOpenAIServer, **kw) -> OpenAICompatibleClient:
    kw.setdefault("backoff_base_s", 0.001)
    kw.setdefault("backoff_max_s", 0.01)
    kw.setdefault("timeout_s", 5.0)
    return OpenAICompatibleClient(srv.url, "m", **kw)


def chat(text: str, **kw) -> LLMRequest:
    return LLMRequest(messages=(("user", text),), **kw)


def test_parse_executor_spec_ok_and_errors():
    spec = parse_executor_spec("http://127.0.0.1:8000/v1/#Qwen/Qwen2.5-7B-Instruct")
    assert spec.url == "http://127.0.0.1:8000/v1" and spec.model == "Qwen/Qwen2.5-7B-Instruct"
    for bad, words in [
        ("http://host/v1", "URL#MODEL"),
        ("ftp://host#m", r"not an http\(s\) URL"),
        ("http://host/v1#", "names no model"),
        ("http://u:pw@host/v1#m", "environment variable"),
    ]:
        with pytest.raises(WorkflowRLError, match=words):
            parse_executor_spec(bad)


def test_chat_and_completion_parsing_with_logprobs(server):
    client = client_for(server)
    server.enqueue(ScriptedReply(text="a b c", logprobs=[-0.1, -0.2, -0.3]))
    resp = asyncio.run(client.complete(chat("hello world", logprobs=True, n=2)))
    assert [c.text for c in resp.choices] == ["a b c", "a b c"]
    assert resp.choices[0].logprobs == (-0.1, -0.2, -0.3)
    assert resp.prompt_tokens == 2 and resp.completion_tokens == 6
    body = server.requests[-1]
    assert body["messages"] == [{"role": "user", "content": "hello world"}] and body["logprobs"] is True
    resp = asyncio.run(client.complete(LLMRequest(prompt="x y", logprobs=True, stop=("\n",))))
    assert resp.choices[0].text == "x y" and resp.choices[0].logprobs == (-0.5, -0.5)
    assert server.requests[-1]["logprobs"] == 0 and server.requests[-1]["stop"] == ["\n"]


def test_retries_on_429_and_500_honouring_retry_after(server):
    client = client_for(server, max_attempts=4)
    server.enqueue(ScriptedReply(status=429, body="{}", headers={"Retry-After": "0"}),
                   ScriptedReply(status=503, body="busy"), "ok")
    resp = asyncio.run(client.complete(chat("q")))
    assert resp.choices[0].text == "ok" and server.request_count == 3


def test_retry_after_seconds_is_waited(server, monkeypatch):
    client = client_for(server, max_attempts=2, backoff_max_s=5.0)
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(s):
        slept.append(s)
        await real_sleep(0)

    monkeypatch.setattr("workflow_rl.llm.openai.asyncio.sleep", fake_sleep)
    server.enqueue(ScriptedReply(status=429, body="{}", headers={"Retry-After": "3"}), "ok")
    asyncio.run(client.complete(chat("q")))
    assert slept == [3.0]


def test_timeout_is_retried(server):
    client = client_for(server, timeout_s=0.2, max_attempts=3)
    server.enqueue(ScriptedReply(text="slow", delay_s=1.0), "fast")
    resp = asyncio.run(client.complete(chat("q")))
    assert resp.choices[0].text == "fast" and server.request_count == 2


def test_non_retryable_status_fails_at_once(server):
    client = client_for(server, max_attempts=5)
    server.enqueue(ScriptedReply(status=400, body='{"error": "bad model"}'))
    with pytest.raises(LLMEndpointError, match="HTTP 400"):
        asyncio.run(client.complete(chat("q")))
    assert server.request_count == 1


def test_malformed_body_is_a_clear_error(server):
    client = client_for(server)
    server.enqueue(ScriptedReply(body="not json"), ScriptedReply(body='{"choices": [{"nope": 1}]}'))
    with pytest.raises(LLMEndpointError, match="not JSON"):
        asyncio.run(client.complete(chat("q")))
    with pytest.raises(LLMEndpointError, match="malformed completion response"):
        asyncio.run(client.complete(chat("q")))


def test_unreachable_endpoint_one_clear_error_after_retries():
    client = OpenAICompatibleClient("http://127.0.0.1:9/v1", "m", max_attempts=3,
                                    backoff_base_s=0.001, backoff_max_s=0.01)
    with pytest.raises(WorkflowRLError, match="gave up after 3 attempts; last error: connection failed"):
        asyncio.run(client.complete(chat("q")))


def test_cache_second_identical_call_does_not_reach_server(server, tmp_path):
    cache = ResponseCache(tmp_path / "llm.sqlite")
    prices = PriceTable.from_dict({"m": {"prompt_per_million": 1e6, "completion_per_million": 2e6}})
    client = client_for(server, cache=cache, prices=prices)
    req = chat("two words", temperature=0.8, n=2, seed=7)
    first = asyncio.run(client.complete(req))
    # prompt 2 tokens * $1 + completion (2 choices * 2 words) * $2 = 10
    assert first.cost == pytest.approx(10.0) and not first.cached
    # A new client on the same file (a re-run) replays the stored answer for free.
    again = asyncio.run(client_for(server, cache=ResponseCache(tmp_path / "llm.sqlite")).complete(req))
    assert server.request_count == 1
    assert again.cached and again.cost == 0.0 and again.choices == first.choices
    assert again.prompt_tokens == first.prompt_tokens
    # Another seed is another request.
    asyncio.run(client.complete(chat("two words", temperature=0.8, n=2, seed=8)))
    assert server.request_count == 2


def test_unknown_price_is_none_not_zero(server):
    resp = asyncio.run(client_for(server).complete(chat("q")))
    assert resp.cost is None


def test_concurrency_bound_respected(server):
    server.responder = lambda req: ScriptedReply(text="ok", delay_s=0.05)
    client = client_for(server, max_concurrency=3, adaptive_concurrency=False)  # a fixed bound (adaptive: test_concurrency)

    async def many():
        return await asyncio.gather(*(client.complete(chat(f"q{i}")) for i in range(12)))

    results = asyncio.run(many())
    assert len(results) == 12 and server.request_count == 12
    assert server.max_in_flight == 3


def test_api_key_sent_but_never_stored_logged_or_in_errors(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MY_KEY", SECRET)
    cache_file = tmp_path / "llm.sqlite"
    client = make_executor(f"{server.url}#m", cache_path=cache_file, api_key_env="MY_KEY", max_attempts=2)
    client.backoff_base_s = client.backoff_max_s = 0.001
    asyncio.run(client.complete(chat("q")))
    assert server.headers[-1]["Authorization"] == f"Bearer {SECRET}"
    # The server echoes the key back in an error body: it must be scrubbed from logs and errors.
    server.enqueue(ScriptedReply(status=500, body=f"bad key {SECRET}"), ScriptedReply(status=401, body=f"no {SECRET}"))
    with caplog.at_level(logging.DEBUG), pytest.raises(LLMEndpointError) as err:
        asyncio.run(client.complete(chat("other")))
    assert SECRET not in str(err.value) and "***" in str(err.value)
    assert SECRET not in caplog.text and "HTTP 500" in caplog.text
    assert SECRET.encode() not in cache_file.read_bytes()


def test_make_executor_reads_environment(tmp_path, monkeypatch):
    prices = tmp_path / "prices.toml"
    prices.write_text('[models.m]\nprompt_per_million = 1\ncompletion_per_million = 1\n')
    monkeypatch.setenv("WORKFLOW_RL_LLM_PRICES", str(prices))
    monkeypatch.setenv("WORKFLOW_RL_LLM_NO_CACHE", "1")
    monkeypatch.setenv("WORKFLOW_RL_LLM_CONCURRENCY", "3")
    monkeypatch.setenv("WORKFLOW_RL_LLM_KEY_ENV", "OTHER_KEY")
    client = make_executor("http://127.0.0.1:1/v1#m")
    assert client.cache is None and client.max_concurrency == 3 and client.api_key_env == "OTHER_KEY"
    assert client.prices.cost("m", 10**6, 0) == 1.0
    monkeypatch.setenv("WORKFLOW_RL_LLM_TIMEOUT", "soon")
    with pytest.raises(WorkflowRLError, match="WORKFLOW_RL_LLM_TIMEOUT='soon' is not a number"):
        make_executor("http://127.0.0.1:1/v1#m")
