"""Contracts of the operator layer: the LLM client protocol, operators, and execution results.

`operators` depends on nothing else of ours. LLM operators receive a client that satisfies
:class:`LLMClient`; its implementations (OpenAI-compatible HTTP, transformers, vLLM) live in
``workflow_rl.llm``.

A workflow program is Python source with one async entry function::

    async def solve(problem, ops):
        expr = await ops.extract_expression(problem)
        return await ops.calculate(expr)

Every operator call is ``await ops.<name>(...)``; the returned value of ``solve`` is the
workflow's output (converted to ``str``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

ENTRY_POINT = "solve"
"""Name of the async entry function every workflow program defines."""

ErrorKind = Literal[
    "invalid",  # rejected by the validator, never executed
    "timeout",  # wall-clock or CPU-time limit
    "memory",  # memory limit
    "output_limit",  # output larger than the limit
    "crash",  # the workflow raised, or the worker died
    "operator_error",  # an operator failed (bad arguments, malformed LLM reply, ...)
    "wrong_answer",  # ran fine, scored 0
]


# ---------------------------------------------------------------- LLM client protocol


@dataclass(frozen=True)
class LLMRequest:
    """One request to a language model; the full request is the cache key."""

    messages: tuple[tuple[str, str], ...] = ()  # (role, content) pairs for chat models
    prompt: str | None = None  # raw completion prompt (when messages is empty)
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    logprobs: bool = False  # return per-token logprobs of the sampled tokens
    seed: int | None = None


@dataclass(frozen=True)
class LLMChoice:
    """One sampled completion."""

    text: str
    token_ids: tuple[int, ...] | None = None
    logprobs: tuple[float, ...] | None = None  # per sampled token, at the sampling temperature
    finish_reason: str | None = None


@dataclass(frozen=True)
class LLMResponse:
    """All choices of one request plus usage; ``cost`` is None when the price is unknown."""

    choices: tuple[LLMChoice, ...]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    cached: bool = False
    model: str = ""


@runtime_checkable
class LLMClient(Protocol):
    """What LLM operators need from a model backend."""

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Run one request and return its choices."""
        ...


# ---------------------------------------------------------------- operators


@dataclass
class Usage:
    """Running totals of one execution's operator usage (LLM tokens and cost)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = 0.0  # becomes None as soon as one call had an unknown price
    llm_calls: int = 0
    op_calls: int = 0

    def add(self, response: LLMResponse) -> None:
        """Account one LLM response."""
        self.prompt_tokens += response.prompt_tokens
        self.completion_tokens += response.completion_tokens
        self.llm_calls += 1
        if self.cost is not None:
            self.cost = None if response.cost is None else self.cost + response.cost


@dataclass
class OpContext:
    """What an operator receives on the host: the LLM client (or None) and a code runner."""

    llm: LLMClient | None = None
    run_code: Callable[..., Awaitable[Any]] | None = None  # sandboxed python (set by the runtime)
    usage: Usage = field(default_factory=Usage)
    extras: dict[str, Any] = field(default_factory=dict)  # benchmark data (e.g. entry point, tests)


class OperatorError(Exception):
    """An operator failed (bad arguments, malformed model reply); ``raw`` keeps the raw text."""

    def __init__(self, message: str, raw: str | None = None):
        super().__init__(message)
        self.raw = raw


class InfrastructureError(Exception):
    """A backend an operator relies on is unavailable (e.g. the LLM endpoint, after its retries).

    Not a fault of the workflow: the sandbox never hands it to the workflow as an operator error.
    ``Sandbox.run`` raises it instead of returning a result, so callers abort (and store nothing
    for that execution) rather than record a reward of 0 that a resume would never re-run.
    """


@dataclass(frozen=True)
class Operator:
    """One operator: an async host-side function plus the text used to describe it in prompts.

    ``fn(ctx, *args, **kwargs)`` runs on the host. ``signature`` and ``description`` are what
    prompts render (never hand-typed elsewhere). The sandbox runs ``kind="llm"`` operators as
    asyncio Tasks from their first step (HTTP clients need one); tools' first step runs inline.
    """

    name: str
    fn: Callable[..., Awaitable[Any]]
    signature: str  # e.g. "calculate(expression: str) -> str"
    description: str  # one paragraph
    kind: Literal["tool", "llm"] = "tool"


@dataclass(frozen=True)
class ExecutionResult:
    """Outcome of running one workflow on one problem. Failures are values, never exceptions."""

    output: str | None
    error_kind: ErrorKind | None = None
    error_message: str | None = None
    latency_s: float = 0.0
    usage: Usage = field(default_factory=Usage)

    @property
    def ok(self) -> bool:
        """True when the workflow returned an output."""
        return self.error_kind is None


@dataclass(frozen=True)
class CodeResult:
    """Outcome of running untrusted Python (``OpContext.run_code``) in the sandbox.

    ``run_code(source, *, stdin="", timeout_s=5.0) -> CodeResult`` runs ``source`` as a script in
    a killable worker with the runtime's limits; ``ok`` means it exited without an exception.
    """

    ok: bool
    stdout: str = ""
    stderr: str = ""
    error_kind: ErrorKind | None = None
    error_message: str | None = None
