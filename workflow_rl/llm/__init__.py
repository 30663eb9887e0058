"""LLM clients implementing :class:`operators.base.LLMClient`.

- :mod:`workflow_rl.llm.openai`: any OpenAI-compatible endpoint, selected by ``URL#MODEL``.
- :mod:`workflow_rl.llm.transformers_backend`: a local transformers model (CPU/GPU).
- :mod:`workflow_rl.llm.vllm_backend`: vLLM in-process (optional extra ``vllm``).
- :mod:`workflow_rl.llm.cache` / :mod:`workflow_rl.llm.pricing`: response cache, cost accounting.
"""

from __future__ import annotations

from pathlib import Path

from workflow_rl.llm.cache import ResponseCache
from workflow_rl.llm.openai import ExecutorSpec, OpenAICompatibleClient, parse_executor_spec
from workflow_rl.llm.pricing import ModelPrice, PriceTable

__all__ = [
    "ExecutorSpec",
    "ModelPrice",
    "OpenAICompatibleClient",
    "PriceTable",
    "ResponseCache",
    "make_executor",
    "parse_executor_spec",
]


def make_executor(
    spec: str,
    *,
    cache_path: str | Path | None = None,
    no_cache: bool = False,
    prices_path: str | Path | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    max_concurrency: int = 8,
    max_attempts: int = 5,
    timeout_s: float = 120.0,
) -> OpenAICompatibleClient:
    """The executor client for a ``URL#MODEL`` spec, with the persistent cache unless ``no_cache``.

    This is what CLI commands call with their ``--executor`` option.
    """
    cache = None if no_cache else ResponseCache(cache_path)
    prices = PriceTable.from_toml(prices_path) if prices_path else PriceTable()
    return OpenAICompatibleClient.from_spec(
        spec,
        api_key_env=api_key_env,
        max_concurrency=max_concurrency,
        max_attempts=max_attempts,
        timeout_s=timeout_s,
        cache=cache,
        prices=prices,
    )
