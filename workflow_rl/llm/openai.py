"""An :class:`~operators.base.LLMClient` for any OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp
server, Ollama, hosted APIs) over ``httpx.AsyncClient``.

Selected by an executor spec ``URL#MODEL``, e.g. ``http://127.0.0.1:8000/v1#Qwen/Qwen2.5-7B-Instruct``.
Chat requests (``request.messages``) go to ``/chat/completions``, raw prompts to ``/completions``.

The API key is read from an environment variable (``OPENAI_API_KEY`` by default) and only ever
placed in the ``Authorization`` header: it is not part of the cache key, the response, the spec,
log lines or error messages (any error text is scrubbed of it as a second line of defence).
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import logging
import os
import random
import time
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from operators.base import InfrastructureError, LLMChoice, LLMRequest, LLMResponse
from workflow_rl.errors import WorkflowRLError
from workflow_rl.llm.cache import ResponseCache, request_key
from workflow_rl.llm.concurrency import ConcurrencyController, Slots
from workflow_rl.llm.pricing import PriceTable

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
"""HTTP statuses that are retried (rate limits, overload, transient server errors)."""
OVERLOAD_STATUS = frozenset({429, 503})
"""Statuses that say "too many requests": the adaptive concurrency limit is halved."""


REJECTED_STATUS = frozenset({400, 413, 422})
"""Statuses that reject one request (e.g. a prompt longer than the context): an operator error of
that workflow, not an outage, so the search goes on (every other final failure aborts it)."""


class LLMEndpointError(WorkflowRLError):
    """The endpoint failed for good (after retries, or with a non-retryable status)."""


class LLMEndpointUnavailable(LLMEndpointError, InfrastructureError):
    """The endpoint itself is unusable (down, wrong URL/model/key, not an OpenAI server).

    An :class:`~operators.base.InfrastructureError`: the sandbox aborts the evaluation with it
    instead of scoring the workflow 0 (see ``operators.runtime``).
    """


class LLMWaitExceeded(LLMEndpointUnavailable):
    """A request got no answer within the client's LLM wait bound (``max_wait_s``), retries included.

    The endpoint is stuck or too slow for the load: an outage like any other (the evaluation is
    aborted and nothing is stored), never a ``timeout`` charged to the workflow.
    """


@dataclass(frozen=True)
class ExecutorSpec:
    """A parsed ``URL#MODEL`` executor spec."""

    url: str  # base URL including the API prefix, e.g. http://host:8000/v1 (no trailing slash)
    model: str


def parse_executor_spec(spec: str) -> ExecutorSpec:
    """Parse ``URL#MODEL``; raise :class:`WorkflowRLError` naming the fix on a bad spec."""
    example = "http://127.0.0.1:8000/v1#Qwen/Qwen2.5-7B-Instruct"
    if not isinstance(spec, str) or "#" not in spec:
        raise WorkflowRLError(f"executor spec {spec!r} must look like URL#MODEL, e.g. {example}")
    url, _, model = spec.rpartition("#")
    url, model = url.strip().rstrip("/"), model.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise WorkflowRLError(f"executor spec {spec!r}: {url!r} is not an http(s) URL, e.g. {example}")
    if parts.username or parts.password:
        # Credentials in a URL would end up in the DB (run config) and the cache key.
        raise WorkflowRLError("executor spec: put the API key in an environment variable, not in the URL")
    if not model:
        raise WorkflowRLError(f"executor spec {spec!r} names no model after '#', e.g. {example}")
    return ExecutorSpec(url=urlunsplit(parts), model=model)


def _retry_after_s(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), if present."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


class OpenAICompatibleClient:
    """Async client with adaptive bounded concurrency, retries (backoff + jitter), a wait bound, cache, costs.

    Requests in flight follow what the endpoint serves (:mod:`workflow_rl.llm.concurrency`: from 1
    up to ``max_concurrency``; ``adaptive_concurrency=False`` pins it at ``max_concurrency``).
    Waiting for a slot is first come, first served and unbounded (it moves as long as the endpoint
    answers); from the moment a request is sent, it has ``max_wait_s`` seconds in all (attempts and
    backoff included) before :class:`LLMWaitExceeded` ends it as an outage.
    """

    sampler = "openai"

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        adaptive_concurrency: bool = True,
        max_attempts: int = 5,
        timeout_s: float = 120.0,
        max_wait_s: float = 600.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        cache: ResponseCache | None = None,
        prices: PriceTable | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        cache_endpoint: str | None = None,
        max_tokens: int | None = None,
    ):
        """Client for ``model`` at base ``url``; the key is read from ``$api_key_env`` (may be unset).

        ``cache_endpoint`` stands for ``url`` in response-cache keys: a server whose port changes at
        every start (``--executor local``) is keyed by its model file instead, so its stored replies
        are found again. ``max_tokens`` caps every request's completion budget (the request is cut
        before it is keyed, so the cache holds what was really asked).
        """
        if max_concurrency < 1 or max_attempts < 1:
            raise WorkflowRLError(f"max_concurrency={max_concurrency}, max_attempts={max_attempts}: both must be >= 1")
        if not max_wait_s > 0 or not timeout_s > 0:
            raise WorkflowRLError(f"max_wait_s={max_wait_s}, timeout_s={timeout_s}: both must be > 0")
        self.url = url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.max_wait_s = max_wait_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.cache = cache
        self.cache_endpoint = cache_endpoint or self.url
        self.max_tokens = max_tokens
        self.prices = prices or PriceTable()
        self._transport = transport
        self.max_concurrency = max_concurrency
        self.concurrency = ConcurrencyController(max_concurrency, adaptive=adaptive_concurrency)
        """The limit on requests in flight, shared by every event loop (it describes the endpoint)."""
        # One pooled HTTP client and one slot gate per event loop: both are bound to the loop that
        # created them, and callers (tests, CLI commands) may run several loops one after another.
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[httpx.AsyncClient, Slots]]
        self._per_loop = weakref.WeakKeyDictionary()

    @classmethod
    def from_spec(cls, spec: str, **kwargs: Any) -> OpenAICompatibleClient:
        """Build from an executor spec ``URL#MODEL`` (see :func:`parse_executor_spec`)."""
        parsed = parse_executor_spec(spec)
        return cls(parsed.url, parsed.model, **kwargs)

    # ------------------------------------------------------------------ public API

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Run one request (from the cache when possible); raise :class:`LLMEndpointError` on failure."""
        if self.max_tokens is not None and request.max_tokens > self.max_tokens:
            request = dataclasses.replace(request, max_tokens=self.max_tokens)
        key = request_key(self.cache_endpoint, self.model, request) if self.cache is not None else ""
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return hit
        path, body = self._build_body(request)
        http, slots = self._loop_state()
        ticket = await slots.acquire()
        try:
            sent = time.monotonic()
            data, first_try = await self._post_within_wait_bound(http, path, body)
            response = self._parse_response(data, request)
            if first_try:  # a retried request's time includes backoff: it says nothing of the load
                self.concurrency.on_success(ticket, time.monotonic() - sent, response.completion_tokens)
        finally:
            slots.release()
        if self.cache is not None:
            self.cache.put(key, response)
        return response

    # ------------------------------------------------------------------ request / response

    def _build_body(self, request: LLMRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model,
            "n": request.n,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        if request.messages:
            body["messages"] = [{"role": role, "content": content} for role, content in request.messages]
            if request.logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = 0
            return "/chat/completions", body
        if request.prompt is None:
            raise WorkflowRLError("LLMRequest needs messages or a prompt; both are empty")
        body["prompt"] = request.prompt
        if request.logprobs:
            body["logprobs"] = 0  # completions API: sampled-token logprobs only
        return "/completions", body

    def _parse_response(self, data: Any, request: LLMRequest) -> LLMResponse:
        try:
            raw_choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            choices = tuple(self._parse_choice(c, chat=bool(request.messages), want_logprobs=request.logprobs)
                            for c in raw_choices)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise LLMEndpointUnavailable(
                f"{self.url}: malformed completion response ({type(exc).__name__}: {exc}): {str(data)[:200]}"
            ) from None
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        return LLMResponse(
            choices=choices,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost=self.prices.cost(self.model, prompt_tokens, completion_tokens),
            cached=False,
            model=self.model,
        )

    @staticmethod
    def _parse_choice(choice: dict[str, Any], *, chat: bool, want_logprobs: bool) -> LLMChoice:
        text = (choice["message"].get("content") or "") if chat else choice["text"]
        if not isinstance(text, str):
            raise ValueError(f"choice text is {type(text).__name__}, not a string")
        logprobs: tuple[float, ...] | None = None
        lp = choice.get("logprobs")
        if want_logprobs and lp:
            if chat:
                logprobs = tuple(float(t["logprob"]) for t in lp["content"] or ())
            else:
                logprobs = tuple(float(x) for x in lp["token_logprobs"])
        token_ids = choice.get("token_ids")  # vLLM with return_token_ids; absent elsewhere
        return LLMChoice(
            text=text,
            token_ids=None if token_ids is None else tuple(int(t) for t in token_ids),
            logprobs=logprobs,
            finish_reason=choice.get("finish_reason"),
        )

    # ------------------------------------------------------------------ transport

    def _loop_state(self) -> tuple[httpx.AsyncClient, Slots]:
        loop = asyncio.get_running_loop()
        state = self._per_loop.get(loop)
        if state is None:
            # Creating an AsyncClient is slow (SSL context), so it is pooled, not made per call.
            limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
            state = (httpx.AsyncClient(timeout=self.timeout_s, transport=self._transport, limits=limits),
                     Slots(self.concurrency))
            self._per_loop[loop] = state
        return state

    async def aclose(self) -> None:
        """Close the pooled HTTP connections of the running event loop."""
        state = self._per_loop.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state[0].aclose()

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _scrub(self, text: str) -> str:
        """Remove the API key from any text that may reach a log or an error message."""
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key else text

    def _backoff_s(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max_s)
        # Full jitter (AWS architecture blog): spreads retries of many concurrent callers.
        return random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**attempt))

    async def _post_within_wait_bound(self, http: httpx.AsyncClient, path: str,
                                      body: dict[str, Any]) -> tuple[Any, bool]:
        """:meth:`_post_with_retries` bounded by ``max_wait_s`` in all; past it, :class:`LLMWaitExceeded`."""
        try:  # wait_for, not asyncio.timeout: that needs Python 3.11 and the package supports 3.10
            return await asyncio.wait_for(self._post_with_retries(http, path, body), self.max_wait_s)
        except asyncio.TimeoutError:
            raise LLMWaitExceeded(
                f"{self.url}{path}: no answer within the LLM wait bound of {self.max_wait_s:g}s (retries included; "
                "WORKFLOW_RL_LLM_MAX_WAIT): the endpoint is stuck or too slow for this load; raise the bound "
                "or lower WORKFLOW_RL_LLM_CONCURRENCY"
            ) from None

    async def _post_with_retries(self, http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> tuple[Any, bool]:
        """POST with retries; returns the JSON reply and whether the first attempt brought it."""
        last = "no attempt made"
        for attempt in range(self.max_attempts):
            retry_after = None
            try:
                resp = await http.post(self.url + path, json=body, headers=self._headers())
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout_s}s"
            except httpx.TransportError as exc:
                last = f"connection failed ({type(exc).__name__}: {self._scrub(str(exc))})"
            else:
                if resp.status_code == 200:
                    try:
                        return resp.json(), attempt == 0
                    except ValueError:
                        raise LLMEndpointUnavailable(
                            f"{self.url}{path}: response is not JSON: {self._scrub(resp.text[:200])!r}"
                        ) from None
                detail = self._scrub(resp.text[:300])
                if resp.status_code not in RETRY_STATUS:
                    kind = LLMEndpointError if resp.status_code in REJECTED_STATUS else LLMEndpointUnavailable
                    raise kind(f"{self.url}{path}: HTTP {resp.status_code}: {detail}")
                last = f"HTTP {resp.status_code}: {detail}"
                if resp.status_code in OVERLOAD_STATUS:
                    self.concurrency.on_overload()
                retry_after = _retry_after_s(resp)
            if attempt + 1 < self.max_attempts:
                delay = self._backoff_s(attempt, retry_after)
                log.warning("LLM call to %s%s failed (%s); retry %d/%d in %.2fs",
                            self.url, path, last, attempt + 1, self.max_attempts - 1, delay)
                await asyncio.sleep(delay)
        raise LLMEndpointUnavailable(f"{self.url}{path}: gave up after {self.max_attempts} attempts; last error: {last}")
