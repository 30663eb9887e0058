"""Text extraction and unit tables for the tool operators (pure functions).

Each extractor finds one kind of thing in free text (numbers, an arithmetic expression, an
equation, a list, quoted text, unit names) and raises :class:`operators.base.OperatorError` with a
precise message when there is none. The async operator wrappers live in ``operators.tools``.
"""

from __future__ import annotations

import re
from fractions import Fraction

from operators.base import OperatorError
from operators.tools_numbers import normalize_symbols

MAX_TEXT_CHARS = 20_000
"""Longest text an extractor scans (bounds regex work on hostile input)."""


def check_text(text: object, what: str = "text") -> str:
    """Return ``text`` when it is a string of bounded size, else raise OperatorError."""
    if not isinstance(text, str):
        raise OperatorError(f"{what} must be a string, got a {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise OperatorError(f"{what} too long ({len(text)} chars, limit {MAX_TEXT_CHARS})")
    return text


MAX_NUMBER_CHARS = 100
"""Longest number an extractor returns (longer digit runs are refused, not silently rounded)."""


def _as_json_number(text: str) -> int | float:
    if len(text) > MAX_NUMBER_CHARS:
        raise OperatorError(f"number too long ({len(text)} characters, limit {MAX_NUMBER_CHARS})")
    return float(text) if "." in text else int(text)


# A minus sign belongs to a number only at the start, after whitespace or an opening bracket or
# separator: in "x-7" or "10-3" it is subtraction, in "temperatures: -3, 5" it is a sign.
_SIGN_CONTEXT = "([,:;="


def extract_numbers(text: str) -> list[int | float]:
    """All numbers in ``text`` in order: ints as int, decimals as float; '-' is a sign only
    after a space, bracket, separator or at the start (so "10-3" gives [10, 3])."""
    text = check_text(text)
    numbers: list[int | float] = []
    for match in re.finditer(r"\d+(?:\.\d+)?", text):
        start = match.start()
        if start > 0 and text[start - 1] == ".":
            continue  # the tail of "1.2.3"-style tokens, not a number of its own
        token = match.group()
        if start > 0 and text[start - 1] == "-":
            before = text[start - 2] if start > 1 else " "
            if before.isspace() or before in _SIGN_CONTEXT:
                token = "-" + token
        numbers.append(_as_json_number(token))
    return numbers


def extract_number(text: str, index: int = 0) -> int | float:
    """The ``index``-th number of ``text`` (negative counts from the end)."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise OperatorError(f"index must be an int, got {index!r}")
    numbers = extract_numbers(text)
    if not numbers:
        raise OperatorError(f"no number in {text[:80]!r}")
    if not -len(numbers) <= index < len(numbers):
        raise OperatorError(f"index {index} out of range: the text has {len(numbers)} number(s)")
    return numbers[index]


# Spoken operators, longest phrases first so "multiplied by" wins over a bare "by".
_WORD_OPERATORS = (
    (r"to the power of", "**"),
    (r"multiplied by", "*"),
    (r"divided by", "/"),
    (r"plus", "+"),
    (r"minus", "-"),
    (r"times", "*"),
    (r"squared", "**2"),
    (r"cubed", "**3"),
)
_EXPRESSION_RUN = re.compile(r"[\d.+\-*/()\s]+")


def _trim_expression(run: str) -> str:
    run = run.strip()
    # Drop sentence punctuation and dangling operators at the ends ("3 + 4." / "= 5" leftovers).
    while run and run[-1] in "+-*/(. ":
        run = run[:-1].rstrip()
    while run and run[0] in "+*/). ":
        run = run[1:].lstrip()
    # Unbalanced outer brackets come from surrounding prose like "(see 3 + 4".
    while run.count("(") > run.count(")") and run.startswith("("):
        run = run[1:].lstrip()
    while run.count(")") > run.count("(") and run.endswith(")"):
        run = run[:-1].rstrip()
    return run


def extract_expression(text: str) -> str:
    """The arithmetic expression in ``text``: the run of numbers, operators and brackets with the
    most operators (spoken operators such as "plus", "times", "divided by" are translated)."""
    text = normalize_symbols(check_text(text))
    for phrase, symbol in _WORD_OPERATORS:
        text = re.sub(rf"\b{phrase}\b", f" {symbol} ", text, flags=re.IGNORECASE)
    best: tuple[int, int] | None = None
    best_run = ""
    for match in _EXPRESSION_RUN.finditer(text):
        run = _trim_expression(match.group())
        if not any(ch.isdigit() for ch in run):
            continue
        # A leading '-' is a sign, not an operator, so it does not count.
        operators = len(re.findall(r"\*\*|[+\-*/]", run.lstrip("-")))
        rank = (operators, len(run))
        if best is None or rank > best:
            best, best_run = rank, run
    if best is None:
        raise OperatorError(f"no arithmetic expression in {text[:80]!r}")
    return re.sub(r"\s+", " ", best_run)


_EQUATION_TOKEN = re.compile(r"\d+(?:\.\d+)?|[A-Za-z]+|\*\*|[-+*/()=]|\S")


def _is_equation_token(token: str) -> bool:
    return (
        token[0].isdigit()
        or (token.isalpha() and len(token) == 1)
        or token in {"+", "-", "*", "/", "**", "(", ")", "="}
    )


def extract_equation(text: str) -> str:
    """The equation around the first '=' in ``text``: the longest span of numbers, one-letter
    unknowns, operators and brackets containing it ("If 4x - 2 = 10, what is x?" -> "4x - 2 = 10")."""
    text = normalize_symbols(check_text(text))
    tokens = [(m.group(), m.start(), m.end()) for m in _EQUATION_TOKEN.finditer(text)]
    eq_positions = [i for i, (tok, _, _) in enumerate(tokens) if tok == "="]
    if not eq_positions:
        raise OperatorError(f"no equation ('=') in {text[:80]!r}")
    first = last = eq_positions[0]
    while first > 0 and _is_equation_token(tokens[first - 1][0]):
        first -= 1
    while last + 1 < len(tokens) and _is_equation_token(tokens[last + 1][0]):
        last += 1
    # Dangling operators at the edges come from prose ("Solve: = 5" or "3x = 9 -").
    while first < last and tokens[first][0] in {"+", "*", "/", "**", ")", "="}:
        first += 1
    while last > first and tokens[last][0] in {"+", "-", "*", "/", "**", "(", "="}:
        last -= 1
    equation = text[tokens[first][1] : tokens[last][2]].strip()
    left, _, right = equation.partition("=")
    if not left.strip() or not right.strip():
        raise OperatorError(f"the '=' in {text[:80]!r} has no expression on one side")
    return equation


# The lookbehind lets a match start only where a number starts, so a long digit run is scanned
# once instead of from every position inside it (quadratic backtracking on hostile input).
_NUMBER_LIST = re.compile(
    r"(?<![\d.])-?\d+(?:\.\d+)?(?:\s*(?:,\s*(?:and\s+)?|\band\s+)-?\d+(?:\.\d+)?)+", re.IGNORECASE
)


def extract_list(text: str) -> list[int | float | str]:
    """The items of the first ``[...]`` list in ``text`` (numbers become numbers, quotes are
    stripped), else the longest run of numbers separated by commas and/or "and"."""
    text = check_text(text)
    bracket = re.search(r"\[([^\[\]]*)\]", text)
    if bracket:
        items: list[int | float | str] = []
        for raw in bracket.group(1).split(","):
            item = raw.strip().strip("'\"").strip()
            if not item:
                continue
            items.append(_as_json_number(item) if re.fullmatch(r"-?\d+(?:\.\d+)?", item) else item)
        return items
    runs = [m.group() for m in _NUMBER_LIST.finditer(text)]
    if not runs:
        raise OperatorError(f"no list in {text[:80]!r}: write [a, b, c] or 'a, b and c'")
    longest = max(runs, key=lambda run: len(re.findall(r"\d+(?:\.\d+)?", run)))
    return [_as_json_number(tok) for tok in re.findall(r"-?\d+(?:\.\d+)?", longest)]


# An opening quote must not follow a letter or digit, so the apostrophe in "What's" is skipped.
_QUOTED = re.compile(r"(?<![A-Za-z0-9])'([^'\n]+)'(?![A-Za-z0-9])|\"([^\"\n]*)\"|“([^”\n]*)”|‘([^’\n]*)’")


def extract_quoted(text: str, index: int = 0) -> str:
    """The ``index``-th quoted string of ``text`` ('...', "...", “...” or ‘...’), without quotes."""
    text = check_text(text)
    if isinstance(index, bool) or not isinstance(index, int):
        raise OperatorError(f"index must be an int, got {index!r}")
    found = [next(g for g in m.groups() if g is not None) for m in _QUOTED.finditer(text)]
    if not found:
        raise OperatorError(f"no quoted text in {text[:80]!r}")
    if not -len(found) <= index < len(found):
        raise OperatorError(f"index {index} out of range: the text has {len(found)} quoted string(s)")
    return found[index]


# --------------------------------------------------------------------------- units

UNITS: dict[str, tuple[str, Fraction]] = {
    "mm": ("length", Fraction(1, 1000)),
    "cm": ("length", Fraction(1, 100)),
    "m": ("length", Fraction(1)),
    "km": ("length", Fraction(1000)),
    "mg": ("mass", Fraction(1, 1000)),
    "g": ("mass", Fraction(1)),
    "kg": ("mass", Fraction(1000)),
    "ml": ("volume", Fraction(1, 1000)),
    "l": ("volume", Fraction(1)),
    "s": ("time", Fraction(1)),
    "min": ("time", Fraction(60)),
    "h": ("time", Fraction(3600)),
    "day": ("time", Fraction(86400)),
}
"""Canonical unit symbol -> (dimension, size in the dimension's base unit)."""

UNIT_ALIASES: dict[str, str] = {
    **{u: u for u in UNITS},
    "millimetre": "mm", "millimeter": "mm", "centimetre": "cm", "centimeter": "cm",
    "metre": "m", "meter": "m", "kilometre": "km", "kilometer": "km",
    "milligram": "mg", "gram": "g", "kilogram": "kg",
    "millilitre": "ml", "milliliter": "ml", "litre": "l", "liter": "l",
    "second": "s", "sec": "s", "minute": "min", "hour": "h", "hr": "h", "days": "day",
}  # fmt: skip
"""Every accepted spelling (plurals are handled by :func:`canonical_unit`) -> canonical symbol."""


def canonical_unit(name: object) -> str:
    """Canonical symbol of a unit name ("Kilometres" -> "km"); OperatorError when unknown."""
    if not isinstance(name, str):
        raise OperatorError(f"a unit must be a string, got a {type(name).__name__}")
    key = name.strip().lower().rstrip(".")
    for candidate in (key, key[:-1] if key.endswith("s") and len(key) > 2 else key):
        if candidate in UNIT_ALIASES:
            return UNIT_ALIASES[candidate]
    raise OperatorError(f"unknown unit {name!r}; known: {', '.join(UNITS)}")


def extract_units(text: str) -> list[str]:
    """Canonical symbols of the unit words in ``text``, in order of appearance."""
    text = check_text(text)
    units = []
    for match in re.finditer(r"(?<![A-Za-z'’])[A-Za-z]+(?![A-Za-z'’])", text):
        try:
            units.append(canonical_unit(match.group()))
        except OperatorError:
            continue
    return units


def convert_exact(value: Fraction, from_unit: str, to_unit: str) -> Fraction:
    """``value`` in ``from_unit`` expressed in ``to_unit`` (same dimension), exactly."""
    src, dst = canonical_unit(from_unit), canonical_unit(to_unit)
    (src_dim, src_size), (dst_dim, dst_size) = UNITS[src], UNITS[dst]
    if src_dim != dst_dim:
        raise OperatorError(f"cannot convert {src} ({src_dim}) to {dst} ({dst_dim})")
    return value * src_size / dst_size
