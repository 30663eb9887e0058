"""Exact number handling for the tool operators: parsing, canonical rendering, a safe calculator
and a small equation solver.

Canonical number form (the one rendering every numeric tool returns, see :func:`format_number`):
an integer renders as an int (``"4"``, ``"-12"``); a non-integer whose reduced denominator has only
the prime factors 2 and 5 renders as an exact decimal (``"2.5"``, ``"-0.125"``); any other
rational renders as a reduced fraction (``"7/3"``, ``"-1/6"``). Nothing is ever rounded.

Pure functions raising :class:`operators.base.OperatorError`; the async operator wrappers live in
``operators.tools``.
"""

from __future__ import annotations

import ast
import functools
import re
from fractions import Fraction

from operators.base import OperatorError

MAX_EXPRESSION_CHARS = 500
"""Longest expression the calculator or equation solver accepts (bounds parse depth and size)."""

MAX_EXPONENT = 64
"""Largest absolute integer exponent ``**`` accepts."""

MAX_BITS = 4096
"""Largest numerator/denominator size (bits) of any intermediate result: stops 9**9**9 bombs."""

MAX_EQUATION_DEGREE = 4
"""Largest power of the unknown ``solve_equation`` accepts (keeps sympy fast and exact)."""

_NUMBER_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?$")
_FRACTION_RE = re.compile(r"^([+-]?\d+)\s*/\s*([+-]?\d+)$")
# Unicode operators that appear in copied text; mapped before parsing so "3 × 4" works.
_SYMBOLS = {"×": "*", "·": "*", "÷": "/", "−": "-", "^": "**"}


def normalize_symbols(text: str) -> str:
    """Map ×, ·, ÷, − and ^ to Python's * / - ** so copied maths parses."""
    for src, dst in _SYMBOLS.items():
        text = text.replace(src, dst)
    return text


def parse_number(value: object) -> Fraction:
    """Exact value of an int, a float (its shortest repr), a Fraction or a numeric string.

    Strings may be ints, decimals (``"2.50"``, ``"1e3"``) or fractions (``"8/2"``). Anything else
    raises OperatorError naming the value.
    """
    if isinstance(value, bool):
        raise OperatorError(f"expected a number, got the boolean {value!r}")
    if isinstance(value, int | Fraction):
        return Fraction(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise OperatorError(f"expected a finite number, got {value!r}")
        # repr gives the shortest decimal that round-trips, i.e. what the producer meant (0.1, not 0.1000...01).
        return Fraction(repr(value))
    if isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_EXPRESSION_CHARS:
            raise OperatorError(f"number too long ({len(text)} characters, limit {MAX_EXPRESSION_CHARS})")
        if _NUMBER_RE.match(text):
            return Fraction(text)
        match = _FRACTION_RE.match(text)
        if match:
            num, den = int(match.group(1)), int(match.group(2))
            if den == 0:
                raise OperatorError(f"division by zero in the number {value!r}")
            return Fraction(num, den)
        raise OperatorError(f"expected a number, got the text {value[:60]!r}")
    raise OperatorError(f"expected a number, got a {type(value).__name__}")


def format_number(value: Fraction | int) -> str:
    """Render exactly in the canonical form (int, exact decimal, or reduced fraction)."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value.numerator) * (10**places // value.denominator)
    digits = str(scaled).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def numbers_equal(a: object, b: object) -> bool:
    """True when both parse as numbers with the same exact value ("4", "4.0", "8/2" are equal)."""
    try:
        return parse_number(a) == parse_number(b)
    except OperatorError:
        return False


def _check_size(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise OperatorError(f"result too large (over {MAX_BITS} bits)")
    return value


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise OperatorError(f"only integer exponents are supported, got {format_number(exponent)}")
    exp = exponent.numerator
    if abs(exp) > MAX_EXPONENT:
        raise OperatorError(f"exponent {exp} is out of range (|exponent| <= {MAX_EXPONENT})")
    if base == 0 and exp < 0:
        raise OperatorError("division by zero: 0 raised to a negative power")
    # Estimate the size before computing so a huge power is refused without being built.
    bits = max(base.numerator.bit_length(), base.denominator.bit_length()) * abs(exp)
    if bits > MAX_BITS:
        raise OperatorError(f"result too large (over {MAX_BITS} bits)")
    return base**exp


def _parse_tree(source: str, what: str) -> ast.expr:
    if len(source) > MAX_EXPRESSION_CHARS:
        raise OperatorError(f"{what} too long ({len(source)} chars, limit {MAX_EXPRESSION_CHARS})")
    if not source.strip():
        raise OperatorError(f"empty {what}")
    try:
        return ast.parse(source.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise OperatorError(f"cannot parse {what} {source[:80]!r}: {exc.__class__.__name__}") from None


def _constant(node: ast.Constant) -> Fraction:
    if isinstance(node.value, bool) or not isinstance(node.value, int | float):
        raise OperatorError(f"unsupported literal {node.value!r}; only numbers are allowed")
    return parse_number(node.value)


def _eval(node: ast.expr) -> Fraction:
    if isinstance(node, ast.Constant):
        return _constant(node)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Add):
            return _check_size(left + right)
        if isinstance(node.op, ast.Sub):
            return _check_size(left - right)
        if isinstance(node.op, ast.Mult):
            return _check_size(left * right)
        if isinstance(node.op, ast.Div):
            if right == 0:
                raise OperatorError("division by zero")
            return _check_size(left / right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        raise OperatorError(f"operator {type(node.op).__name__} is not supported; use + - * / ** and ()")
    if isinstance(node, ast.Name):
        raise OperatorError(f"unknown name {node.id!r}: the calculator takes numbers only")
    raise OperatorError(f"unsupported syntax ({type(node).__name__}); use numbers, + - * / ** and ()")


def evaluate_expression(expression: str) -> Fraction:
    """Exact value of an arithmetic expression: numbers, + - * / ** (bounded), (), unary minus."""
    if not isinstance(expression, str):
        raise OperatorError(f"calculate expects a string expression, got a {type(expression).__name__}")
    return _eval(_parse_tree(normalize_symbols(expression), "expression"))


# --------------------------------------------------------------------------- equations

# "3x" -> "3*x", "2(x+1)" -> "2*(x+1)", ")(" -> ")*(": people write implicit products.
_IMPLICIT_PRODUCT = re.compile(r"(?<=[\d)])\s*(?=[A-Za-z(])")


def _to_sympy(node: ast.expr, names: dict):
    import sympy

    if isinstance(node, ast.Constant):
        value = _constant(node)
        return sympy.Rational(value.numerator, value.denominator)
    if isinstance(node, ast.Name):
        if not node.id.isalpha() or len(node.id) > 3:
            raise OperatorError(f"unsupported unknown {node.id!r}; use short letter names like x")
        return names.setdefault(node.id, sympy.Symbol(node.id))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _to_sympy(node.operand, names)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = _to_sympy(node.left, names), _to_sympy(node.right, names)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            if right == 0:
                raise OperatorError("division by zero in the equation")
            return left / right
        if isinstance(node.op, ast.Pow):
            if not right.is_Integer or not 0 <= int(right) <= MAX_EQUATION_DEGREE:
                raise OperatorError(f"exponents must be integers 0..{MAX_EQUATION_DEGREE} in equations")
            return left**right
    raise OperatorError(f"unsupported syntax in equation ({type(node).__name__})")


def _linear(node: ast.expr, variable: str) -> tuple[Fraction, Fraction] | None:
    """``(a, b)`` with node == a*variable + b, or None when it is not plainly linear in it.

    The fast path for the common case (sympy costs milliseconds per call); anything else, other
    unknowns included, goes to sympy, which also produces the precise error messages.
    """
    if isinstance(node, ast.Constant):
        return Fraction(0), _constant(node)
    if isinstance(node, ast.Name):
        return (Fraction(1), Fraction(0)) if node.id == variable else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _linear(node.operand, variable)
        if inner is None or isinstance(node.op, ast.UAdd):
            return inner
        return -inner[0], -inner[1]
    if not isinstance(node, ast.BinOp) or not isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
        return None
    left, right = _linear(node.left, variable), _linear(node.right, variable)
    if left is None or right is None:
        return None
    if isinstance(node.op, ast.Add):
        return left[0] + right[0], left[1] + right[1]
    if isinstance(node.op, ast.Sub):
        return left[0] - right[0], left[1] - right[1]
    if isinstance(node.op, ast.Mult):
        if left[0] and right[0]:
            return None  # quadratic: sympy
        return left[0] * right[1] + right[0] * left[1], left[1] * right[1]
    if right[0] or right[1] == 0:
        return None  # division by an expression in the unknown, or by zero: sympy decides
    return left[0] / right[1], left[1] / right[1]


def _degree_bound(node: ast.expr) -> int:
    """An upper bound of the polynomial degree (in all unknowns) after clearing denominators."""
    if isinstance(node, ast.Name):
        return 1
    if isinstance(node, ast.UnaryOp):
        return _degree_bound(node.operand)
    if isinstance(node, ast.BinOp):
        left, right = _degree_bound(node.left), _degree_bound(node.right)
        if isinstance(node.op, ast.Add | ast.Sub):
            return max(left, right)
        if isinstance(node.op, ast.Pow):
            exponent = node.right.value if isinstance(node.right, ast.Constant) else None
            if (
                not isinstance(exponent, int)
                or isinstance(exponent, bool)
                or not 0 <= exponent <= MAX_EQUATION_DEGREE
            ):
                raise OperatorError(f"exponents must be integers 0..{MAX_EQUATION_DEGREE} in equations")
            return left * exponent
        return left + right  # * and / (a denominator multiplies into the other side)
    return 0


def solve_equation_exact(equation: str, variable: str = "x") -> list[Fraction]:
    """Rational solutions (ascending) of one equation in one unknown, e.g. ``"3x + 5 = 20"``.

    Raises OperatorError when the equation has no ``=``, other unknowns, no solution, infinitely
    many, or only irrational/complex ones.
    """
    if not isinstance(equation, str) or not isinstance(variable, str):
        raise OperatorError("solve_equation expects (equation: str, variable: str)")
    return list(_solve_cached(equation, variable))


@functools.lru_cache(maxsize=4096)
def _solve_cached(equation: str, variable: str) -> tuple[Fraction, ...]:
    # Cached because a search evaluates many workflows on the same problems (same equations).
    text = normalize_symbols(equation).replace("==", "=")
    if text.count("=") != 1:
        raise OperatorError(f"an equation needs exactly one '=', got {text.count('=')} in {equation[:80]!r}")
    trees = [
        _parse_tree(_IMPLICIT_PRODUCT.sub("*", side.strip()), "equation side") for side in text.split("=")
    ]
    lines = [_linear(tree, variable) for tree in trees]
    if lines[0] is not None and lines[1] is not None and lines[0][0] != lines[1][0]:
        return ((lines[1][1] - lines[0][1]) / (lines[0][0] - lines[1][0]),)
    bound = sum(_degree_bound(tree) for tree in trees)
    if bound > MAX_EQUATION_DEGREE:
        # Refused before sympy sees it: expanding ((x+1)**4)**4... would run for hours.
        raise OperatorError(f"degree up to {bound} is too high (at most {MAX_EQUATION_DEGREE})")
    import sympy  # imported only when needed: it costs about a second on first use

    names: dict = {}
    sides = [_to_sympy(tree, names) for tree in trees]
    if variable not in names:
        found = ", ".join(sorted(names)) or "none"
        raise OperatorError(f"variable {variable!r} does not occur in the equation (unknowns: {found})")
    if len(names) > 1:
        others = ", ".join(sorted(n for n in names if n != variable))
        raise OperatorError(f"the equation has other unknowns ({others}); only one is supported")
    expr = sympy.together(sides[0] - sides[1])
    numerator, denominator = sympy.fraction(expr)
    symbol = names[variable]
    if sympy.expand(numerator) == 0:
        raise OperatorError("every value solves the equation (it is an identity)")
    degree = sympy.degree(numerator, symbol)
    if degree > MAX_EQUATION_DEGREE:
        raise OperatorError(f"degree {degree} is too high (at most {MAX_EQUATION_DEGREE})")
    roots = sympy.solve(numerator, symbol)
    solutions = set()
    for root in roots:
        if root.is_Rational and denominator.subs(symbol, root) != 0:
            solutions.add(Fraction(int(root.p), int(root.q)))
    if not solutions:
        if roots:
            raise OperatorError(f"no rational solution (solutions: {', '.join(map(str, roots))})")
        raise OperatorError("the equation has no solution")
    return tuple(sorted(solutions))
