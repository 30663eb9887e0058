"""Finding operator calls (``ops.X(...)``, ``await ops.X(...)``) in a workflow's AST.

One matcher for every package that reads workflow programs: the structural graph
(:mod:`operators.graph`), the mutation proposer and the graft / canonical-form transforms. They
used to carry three copies of the same ``isinstance`` chain, which could drift apart (one accepted
a bare call, the others only an awaited one). Only ``<ops_name>.X`` on the bare name that
``solve`` receives as its second parameter counts: ``self.ops.X`` or ``get_ops().X`` is not an
operator call the validator would accept.
"""

from __future__ import annotations

import ast


def op_call_name(node: ast.AST | None, ops_name: str = "ops") -> str | None:
    """``X`` when ``node`` is a call ``<ops_name>.X(...)`` (awaited or not), else None."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == ops_name):
        return node.func.attr
    return None


def awaited_op_name(node: ast.AST | None, ops_name: str = "ops") -> str | None:
    """``X`` when ``node`` is ``await <ops_name>.X(...)``, else None."""
    return op_call_name(node.value, ops_name) if isinstance(node, ast.Await) else None


def awaited_op_calls(root: ast.AST, ops_name: str = "ops") -> list[tuple[ast.Await, str]]:
    """Every ``await <ops_name>.X(...)`` below ``root`` with its ``X``, in ``ast.walk`` (breadth-first)
    order: callers draw from this list with a seeded RNG, so the order is part of their behaviour."""
    out = []
    for node in ast.walk(root):
        name = awaited_op_name(node, ops_name)
        if name is not None:
            out.append((node, name))  # type: ignore[arg-type]  # awaited_op_name matched an ast.Await
    return out
