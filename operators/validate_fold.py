"""Size-guarded constant folding for the validator: refuse literals that build huge values.

``'a' * 10**9`` or ``9 ** 9 ** 9`` would exhaust memory or CPU before any runtime limit could
react inside a single C call, so the validator folds constant subexpressions with bounds first.
"""

from __future__ import annotations

import ast
import operator

MAX_INT_CONST = 10**18
"""Largest absolute integer literal or folded constant."""
MAX_SEQ_CONST = 20_000
"""Longest sequence a constant expression may build (``'ab' * n``)."""


class TooBig(Exception):
    """A constant expression would build a huge value."""


class NotConstant(Exception):
    """The expression is not a foldable constant."""


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.LShift: operator.lshift}


def fold(node: ast.AST):
    """Evaluate a constant subexpression with size guards; raise NotConstant if it is not constant."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = fold(node.operand)
        if not isinstance(value, (int, float)):
            raise NotConstant
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [fold(e) for e in node.elts]
    if not isinstance(node, ast.BinOp):
        raise NotConstant
    left, right = fold(node.left), fold(node.right)
    op = node.op
    if isinstance(op, ast.Pow):
        if isinstance(left, (int, float)) and isinstance(right, (int, float)):
            if abs(right) > 64 or (abs(left) > 1 and abs(right) * int(max(abs(left), 2)).bit_length() > 64):
                raise TooBig(f"{left!r} ** {right!r}")
            return left**right
        raise NotConstant
    if isinstance(op, ast.Mult):
        seq, count = (left, right) if isinstance(left, (str, bytes, list)) else (right, left)
        if isinstance(seq, (str, bytes, list)) and isinstance(count, int):
            if len(seq) * max(count, 0) > MAX_SEQ_CONST:
                raise TooBig(f"sequence of length {len(seq) * count}")
            return seq * count
    if isinstance(op, ast.LShift) and isinstance(right, int) and right > 64:
        raise TooBig(f"<< {right}")
    binop = _BINOPS.get(type(op))
    try:
        value = binop(left, right) if binop else None
    except (TypeError, ValueError, OverflowError):
        value = None
    if value is None:
        raise NotConstant
    if isinstance(value, int) and abs(value) > MAX_INT_CONST * MAX_INT_CONST:
        raise TooBig("integer constant")
    if isinstance(value, (str, bytes, list)) and len(value) > MAX_SEQ_CONST:
        raise TooBig(f"sequence of length {len(value)}")
    return value
