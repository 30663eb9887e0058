"""Run a validated workflow in the host process, without isolation: the speed baseline and trusted tests.

Not a sandbox (see :mod:`operators.runtime` for that); re-exported as ``operators.runtime.run_inprocess``.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

from operators.base import OpContext, Operator
from operators.validate import validate_workflow

__all__ = ["run_inprocess"]

_INPROCESS_CACHE: dict[tuple[str, frozenset[str]], Any] = {}


async def run_inprocess(code: str, problem: Any, operators: Mapping[str, Operator], ctx: OpContext | None = None):
    """Run a *validated* workflow in THIS process, without isolation, returning its output string.

    WARNING: not a sandbox. Only for trusted code: the speed baseline of
    ``benchmarks/bench_runtime.py`` and reference tests. Raises whatever the workflow raises
    (``WorkflowValidationError`` for invalid code). Compiled code is cached like in the workers.
    """
    from operators.sandbox_worker import _SAFE  # the same builtins allow-list as the worker

    key = (code, frozenset(operators))
    compiled = _INPROCESS_CACHE.get(key)
    if compiled is None:
        validate_workflow(code, operators)
        if len(_INPROCESS_CACHE) > 4096:
            _INPROCESS_CACHE.clear()
        compiled = _INPROCESS_CACHE[key] = compile(code, "<workflow>", "exec")
    ctx = ctx if ctx is not None else OpContext()
    env = {"__builtins__": {name: getattr(builtins, name) for name in _SAFE}}
    exec(compiled, env)
    value = await env["solve"](problem, _InprocessOps(operators, ctx))
    return "" if value is None else str(value)


class _InprocessOps:
    """``ops`` handle of :func:`run_inprocess`: calls the operator functions directly."""

    def __init__(self, operators: Mapping[str, Operator], ctx: OpContext):
        self._operators, self._ctx = operators, ctx

    def __getattr__(self, name: str):
        op, ctx = self._operators[name], self._ctx

        def call(*args, **kwargs):
            ctx.usage.op_calls += 1
            return op.fn(ctx, *args, **kwargs)

        return call
