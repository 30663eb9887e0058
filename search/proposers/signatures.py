"""Operator signatures parsed from the registry's text, for type-directed program edits.

The registry stores each operator's signature as text (``"calculate(expression: str) -> str"``);
parsing it with :mod:`ast` gives parameter names, annotations and defaults without a second,
hand-typed copy of the operator list.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

ANY = "*"
"""Wildcard type: a missing or ``Any`` annotation matches every type."""


def _norm(annotation: ast.expr | None) -> str:
    if annotation is None:
        return ANY
    text = ast.unparse(annotation).replace(" ", "").replace("typing.", "")
    text = text.replace("List[", "list[").replace("Dict[", "dict[")
    return ANY if text in ("Any", "object") else text


@dataclass(frozen=True)
class OpSignature:
    """Name, parameters ``(name, type, has_default)`` and return type of one operator."""

    name: str
    params: tuple[tuple[str, str, bool], ...]
    returns: str

    @property
    def required(self) -> int:
        """Number of parameters without a default."""
        return sum(1 for _, _, has_default in self.params if not has_default)

    def unary_from(self, type_: str) -> bool:
        """True when the operator can be called with one positional argument of ``type_``."""
        return bool(self.params) and self.required <= 1 and types_match(self.params[0][1], type_)


def types_match(a: str, b: str) -> bool:
    """Compatible when equal or either side is the wildcard."""
    return a == ANY or b == ANY or a == b


def parse_signature(signature: str) -> OpSignature:
    """Parse ``"name(a: str, b: int = 3) -> str"`` (an optional ``ops.`` prefix is ignored)."""
    text = signature.strip().removeprefix("ops.")
    fn = ast.parse(f"def {text}: pass").body[0]
    assert isinstance(fn, ast.FunctionDef)
    args = fn.args
    positional = args.posonlyargs + args.args
    n_defaults = len(args.defaults)
    params = [
        (a.arg, _norm(a.annotation), i >= len(positional) - n_defaults) for i, a in enumerate(positional)
    ]
    params += [
        (a.arg, _norm(a.annotation), d is not None)
        for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
    ]
    return OpSignature(name=fn.name, params=tuple(params), returns=_norm(fn.returns))


def load_signatures(names: tuple[str, ...] | list[str]) -> dict[str, OpSignature]:
    """Signatures of the named operators, straight from ``operators.registry`` (sorted by name)."""
    from operators.registry import get_operators

    ops = get_operators(list(names))
    return {name: parse_signature(ops[name].signature) for name in sorted(ops)}
