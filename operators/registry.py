"""The operator registry: the single source of operator names, signatures and descriptions.

Prompts render operators from here (seed 001: a prompt naming an operator that did not exist).
"""

from __future__ import annotations

from collections.abc import Iterable

# Importing the operator modules runs their @register decorators (they import only operators.registration).
import operators.llm_ops  # noqa: F401
import operators.tools  # noqa: F401
from operators.base import Operator
from operators.registration import REGISTRY, register

__all__ = ["REGISTRY", "describe_operators", "get_operators", "register"]


def get_operators(names: Iterable[str] | None = None) -> dict[str, Operator]:
    """The operators with these names (all when ``names`` is None); unknown names raise KeyError."""
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
