"""Where operators register themselves: the name -> operator table and the ``@register`` decorator.

:mod:`operators.tools` and :mod:`operators.llm_ops` import ``register`` from here, and
:mod:`operators.registry` imports them (which runs their decorators), so the import graph has no cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from operators.base import Operator

REGISTRY: dict[str, Operator] = {}
"""All known operators by name (tool operators from ``operators.tools``, LLM ones from ``operators.llm_ops``)."""


def register(name: str, signature: str, description: str, kind: Literal["tool", "llm"] = "tool") -> Callable:
    """Decorator registering an async host function ``fn(ctx, *args, **kwargs)`` as an operator."""

    # The prompt text is rendered from these fields, so a mismatch would teach models a wrong name.
    if not signature.startswith(f"{name}("):
        raise ValueError(f"operator {name!r}: signature {signature!r} must start with '{name}('")
    if not description.strip():
        raise ValueError(f"operator {name!r} needs a one-paragraph description")

    def wrap(fn: Callable) -> Callable:
        if name in REGISTRY and REGISTRY[name].fn is not fn:
            raise ValueError(f"operator {name!r} is registered twice")
        REGISTRY[name] = Operator(name=name, fn=fn, signature=signature, description=description, kind=kind)
        return fn

    return wrap
