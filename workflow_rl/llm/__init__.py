"""LLM clients implementing :class:`operators.base.LLMClient`.

- :mod:`workflow_rl.llm.openai`: any OpenAI-compatible endpoint, selected by ``URL#MODEL``.
- :mod:`workflow_rl.llm.transformers_backend`: a local transformers model (CPU/GPU).
- :mod:`workflow_rl.llm.vllm_backend`: vLLM in-process (optional extra ``vllm``).
- :mod:`workflow_rl.llm.cache` / :mod:`workflow_rl.llm.pricing`: response cache, cost accounting.
- :mod:`workflow_rl.llm.concurrency`: the limit on requests in flight, adapted to the endpoint's latency.
- :mod:`workflow_rl.llm.local_server`: ``local`` / ``local:PATH``, a llama.cpp server started for the command.
"""

from __future__ import annotations

import os
from pathlib import Path

from workflow_rl.errors import WorkflowRLError
from workflow_rl.llm.cache import ResponseCache
from workflow_rl.llm.local_server import LOCAL_CONCURRENCY, LOCAL_ENV, is_local_spec, shared_server
from workflow_rl.llm.openai import ExecutorSpec, OpenAICompatibleClient, parse_executor_spec
from workflow_rl.llm.pricing import ModelPrice, PriceTable, endpoint_prices, parse_price

__all__ = [
    "EXECUTOR_ENV",
    "ExecutorSpec",
    "ModelPrice",
    "OpenAICompatibleClient",
    "PriceTable",
    "ResponseCache",
    "make_executor",
    "parse_executor_spec",
]


EXECUTOR_ENV = {
    "WORKFLOW_RL_LLM_CACHE": "response cache file (default ~/.cache/workflow-rl/llm.sqlite)",
    "WORKFLOW_RL_LLM_NO_CACHE": "set to 1 to disable the response cache",
    "WORKFLOW_RL_LLM_PRICES": "TOML price file (see workflow_rl.llm.pricing)",
    "WORKFLOW_RL_LLM_PRICE": "price of the endpoint's model, USD per million input,output tokens (e.g. "
                             "0.15,0.60); without it a loopback endpoint costs 0 and others need the price file",
    "WORKFLOW_RL_LLM_KEY_ENV": "name of the variable holding the API key (default OPENAI_API_KEY)",
    "WORKFLOW_RL_LLM_CONCURRENCY": "most requests in flight per endpoint (default 8; 1 for --executor local); "
                                   "the client starts at 1 and adapts up to it from measured latency",
    "WORKFLOW_RL_LLM_ADAPTIVE": "set to 0 to keep WORKFLOW_RL_LLM_CONCURRENCY requests in flight from the start "
                                "instead of adapting (default 1)",
    "WORKFLOW_RL_LLM_ATTEMPTS": "attempts per request before giving up (default 5)",
    "WORKFLOW_RL_LLM_TIMEOUT": "seconds per HTTP request attempt (default 120)",
    "WORKFLOW_RL_LLM_MAX_WAIT": "seconds one request may take from being sent to its answer, retries included "
                                "(default 600); past it the evaluation aborts as an endpoint failure, never a reward",
    "WORKFLOW_RL_LLM_MAX_TOKENS": "most completion tokens one request may ask (default: what the operator asks, "
                                  "1024); a small model on CPU that rambles is cut short",
    **LOCAL_ENV,
}
"""Environment variables that configure executors made by :func:`make_executor` (CLI commands)."""


def _env_number(name: str, default: float, kind: type) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise WorkflowRLError(f"{name}={raw!r} is not a number; {EXECUTOR_ENV[name]}") from None


def make_executor(
    spec: str,
    *,
    cache_path: str | Path | None = None,
    no_cache: bool | None = None,
    prices_path: str | Path | None = None,
    price: str | None = None,
    api_key_env: str | None = None,
    max_concurrency: int | None = None,
    max_attempts: int | None = None,
    timeout_s: float | None = None,
    max_wait_s: float | None = None,
    adaptive_concurrency: bool | None = None,
) -> OpenAICompatibleClient:
    """The executor client for a ``URL#MODEL``, ``local`` or ``local:PATH`` spec, with the persistent
    cache unless ``no_cache``.

    This is what CLI commands call with their ``--executor`` option. Arguments left as None come
    from the environment (:data:`EXECUTOR_ENV`), then from the defaults. ``price`` (``IN,OUT`` in USD
    per million tokens) is the model's price; see :func:`~workflow_rl.llm.pricing.endpoint_prices`
    for how it, the price file and a loopback endpoint's price of 0 combine.

    A local spec starts (or reuses) this process's llama.cpp server for the model
    (:func:`~workflow_rl.llm.local_server.shared_server`, stopped when the command ends); its client
    keys the cache by the model file, not the port, and keeps one request in flight by default.
    """
    if no_cache is None:
        no_cache = os.environ.get("WORKFLOW_RL_LLM_NO_CACHE", "").lower() in ("1", "true", "yes")
    if adaptive_concurrency is None:
        adaptive_concurrency = os.environ.get("WORKFLOW_RL_LLM_ADAPTIVE", "").lower() not in ("0", "false", "no")
    cache = None if no_cache else ResponseCache(cache_path)
    prices_path = prices_path or os.environ.get("WORKFLOW_RL_LLM_PRICES") or None
    prices = PriceTable.from_toml(prices_path) if prices_path else PriceTable()
    env_price = os.environ.get("WORKFLOW_RL_LLM_PRICE") or None
    stated = parse_price(price) if price else parse_price(env_price, "WORKFLOW_RL_LLM_PRICE") if env_price else None
    cache_endpoint, default_concurrency = None, 8
    if is_local_spec(spec):
        server = shared_server(spec)
        spec, cache_endpoint, default_concurrency = server.spec, server.identity, LOCAL_CONCURRENCY
    parsed = parse_executor_spec(spec)
    prices = endpoint_prices(parsed.url, parsed.model, prices, stated)
    return OpenAICompatibleClient.from_spec(
        spec,
        api_key_env=api_key_env or os.environ.get("WORKFLOW_RL_LLM_KEY_ENV") or "OPENAI_API_KEY",
        max_concurrency=max_concurrency or int(_env_number("WORKFLOW_RL_LLM_CONCURRENCY", default_concurrency, int)),
        adaptive_concurrency=adaptive_concurrency,
        max_attempts=max_attempts or int(_env_number("WORKFLOW_RL_LLM_ATTEMPTS", 5, int)),
        timeout_s=timeout_s or _env_number("WORKFLOW_RL_LLM_TIMEOUT", 120.0, float),
        max_wait_s=max_wait_s or _env_number("WORKFLOW_RL_LLM_MAX_WAIT", 600.0, float),
        cache=cache,
        prices=prices,
        cache_endpoint=cache_endpoint,
        max_tokens=int(_env_number("WORKFLOW_RL_LLM_MAX_TOKENS", 0, int)) or None,
    )
