"""Price table: hand-computed costs, unknown models are None, TOML loading and errors."""

from __future__ import annotations

import pytest

from operators.base import LLMChoice, LLMResponse, Usage
from workflow_rl.errors import WorkflowRLError
from workflow_rl.llm.pricing import PriceTable


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
