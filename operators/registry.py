"""The operator registry: the single source of operator names, signatures and descriptions.

Prompts render operators from here (seed 001: a prompt naming an operator that did not exist).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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


def _load_builtin() -> None:
    # Importing the modules runs their @register decorators; imported here, not at module top,
    # because those modules import ``register`` from this one.
    import operators.llm_ops  # noqa: F401
    import operators.tools  # noqa: F401


def get_operators(names: Iterable[str] | None = None) -> dict[str, Operator]:
    """The operators with these names (all when ``names`` is None); unknown names raise KeyError."""
    _load_builtin()
    if names is None:
        return dict(REGISTRY)
    missing = [n for n in names if n not in REGISTRY]
    if missing:
        raise KeyError(f"unknown operator(s) {missing}; known: {sorted(REGISTRY)}")
    return {n: REGISTRY[n] for n in names}


def describe_operators(names: Iterable[str] | None = None) -> str:
    """Render ``- signature: description`` lines for prompts, straight from the registry."""
    ops = get_operators(names)
    return "\n".join(f"- ops.{op.signature}: {op.description}" for op in ops.values())
