"""Price table: hand-computed costs, unknown models are None, TOML loading and errors."""

from __future__ import annotations

import pytest

from operators.base import LLMChoice, LLMResponse, Usage
from workflow_rl.errors import WorkflowRLError
from workflow_rl.llm import make_executor
from workflow_rl.llm.pricing import PriceTable, endpoint_prices, is_loopback, parse_price


def test_cost_hand_computed_and_unknown():
    table = PriceTable.from_dict({"gpt": {"prompt_per_million": 0.15, "completion_per_million": 0.60}})
    # 1000 * 0.15e-6 + 500 * 0.60e-6 = 0.00015 + 0.0003
    assert table.cost("gpt", 1000, 500) == pytest.approx(0.00045)
    assert table.cost("other", 1000, 500) is None


def test_toml_and_bad_entries(tmp_path):
    f = tmp_path / "prices.toml"
    f.write_text('[models."Qwen/Qwen2.5-7B-Instruct"]\nprompt_per_million = 0\ncompletion_per_million = 0\n')
    assert PriceTable.from_toml(f).cost("Qwen/Qwen2.5-7B-Instruct", 10, 10) == 0.0
    with pytest.raises(WorkflowRLError, match="missing"):
        PriceTable.from_dict({"m": {"prompt_per_million": 1}})
    with pytest.raises(WorkflowRLError, match="negative"):
        PriceTable.from_dict({"m": {"prompt_per_million": -1, "completion_per_million": 1}})
    with pytest.raises(WorkflowRLError, match="does not exist"):
        PriceTable.from_toml(tmp_path / "nope.toml")
    f.write_text("[[[")
    with pytest.raises(WorkflowRLError, match="not valid TOML"):
        PriceTable.from_toml(f)


def test_usage_turns_unknown_once_a_price_is_unknown():
    usage = Usage()
    one = (LLMChoice(text="x"),)
    usage.add(LLMResponse(one, prompt_tokens=3, completion_tokens=4, cost=0.5))
    usage.add(LLMResponse(one, prompt_tokens=1, completion_tokens=1, cost=0.25))
    assert usage.cost == pytest.approx(0.75) and usage.prompt_tokens == 4
    usage.add(LLMResponse(one, prompt_tokens=1, completion_tokens=1, cost=None))
    usage.add(LLMResponse(one, cost=1.0))
    assert usage.cost is None and usage.llm_calls == 4


@pytest.mark.parametrize("url, loopback", [
    ("http://127.0.0.1:8000/v1", True), ("http://127.8.9.10/v1", True), ("http://localhost:1/v1", True),
    ("http://LOCALHOST./v1", True), ("http://[::1]:8000/v1", True), ("http://[::ffff:127.0.0.1]:80/v1", True),
    ("http://api.localhost/v1", True), ("https://api.openai.com/v1", False), ("http://10.0.0.5:8000/v1", False),
    ("http://128.0.0.1/v1", False), ("http://localhost.example.com/v1", False), ("http://[::2]/v1", False),
])
def test_is_loopback(url, loopback):
    assert is_loopback(url) is loopback


def test_endpoint_prices_stated_then_file_then_free_on_loopback():
    table = PriceTable.from_dict({"m": {"prompt_per_million": 2, "completion_per_million": 4}})
    local, remote = "http://127.0.0.1:8000/v1", "https://api.example.com/v1"
    assert endpoint_prices(local, "other", table).cost("other", 10**6, 10**6) == 0.0  # a local model: free
    assert endpoint_prices(remote, "other", table).cost("other", 10**6, 10**6) is None  # unknown stays NULL
    assert endpoint_prices(local, "m", table).cost("m", 10**6, 0) == 2.0  # the price file wins over free
    stated = endpoint_prices(local, "m", table, parse_price("1, 3"))
    assert stated.cost("m", 10**6, 10**6) == 4.0  # a stated price wins over both
    assert endpoint_prices(remote, "x", None, parse_price("0,0")).cost("x", 5, 5) == 0.0


@pytest.mark.parametrize("text", ["1", "a,b", "1,2,3", "-1,2", "nan,1", ""])
def test_parse_price_refuses_bad_text(text):
    with pytest.raises(WorkflowRLError, match="USD per million input,output tokens"):
        parse_price(text)


def test_make_executor_prices(monkeypatch):
    monkeypatch.delenv("WORKFLOW_RL_LLM_PRICES", raising=False)
    monkeypatch.delenv("WORKFLOW_RL_LLM_PRICE", raising=False)
    monkeypatch.setenv("WORKFLOW_RL_LLM_NO_CACHE", "1")
    assert make_executor("http://127.0.0.1:1/v1#m").prices.cost("m", 100, 100) == 0.0
    assert make_executor("https://api.example.com/v1#m").prices.cost("m", 100, 100) is None
    assert make_executor("https://api.example.com/v1#m", price="1,2").prices.cost("m", 10**6, 10**6) == 3.0
    monkeypatch.setenv("WORKFLOW_RL_LLM_PRICE", "5,5")
    assert make_executor("http://127.0.0.1:1/v1#m").prices.cost("m", 10**6, 0) == 5.0  # stated: not free
    assert make_executor("http://127.0.0.1:1/v1#m", price="0,0").prices.cost("m", 10**6, 0) == 0.0
    monkeypatch.setenv("WORKFLOW_RL_LLM_PRICE", "cheap")
    with pytest.raises(WorkflowRLError, match="WORKFLOW_RL_LLM_PRICE 'cheap'"):
        make_executor("http://127.0.0.1:1/v1#m")
