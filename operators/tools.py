"""Deterministic tool operators (host side), registered in :mod:`operators.registry`.

Every operator is ``async def fn(ctx: OpContext, ...)`` and returns a plain JSON-able value,
because results cross a process boundary as JSON. Numeric results are strings in the canonical
number form of :mod:`operators.tools_numbers` (ints as ints, exact decimals, else reduced
fractions: ``"4"``, ``"2.5"``, ``"7/3"``), so nothing is lost to floating point; extractors return
numbers as JSON numbers (int, or float for decimals written in the text). Bad input raises
:class:`OperatorError` with a precise message, which the runtime turns into an
``operator_error`` result.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

from operators import tools_text as text_tools
from operators.base import CodeResult, OpContext, OperatorError
from operators.registration import register
from operators.tools_numbers import (
    evaluate_expression,
    format_number,
    parse_number,
    solve_equation_exact,
)

MAX_LIST_ITEMS = 10_000
"""Longest list the list utilities accept."""


def _numbers(values: object, op: str) -> list[Fraction]:
    """Exact values of a non-empty list of numbers or numeric strings."""
    if isinstance(values, str):
        raise OperatorError(
            f"{op} expects a list of numbers, got a string; extract one first (ops.extract_list / ops.extract_numbers)"
        )
    if not isinstance(values, list | tuple):
        raise OperatorError(f"{op} expects a list of numbers, got a {type(values).__name__}")
    if not values:
        raise OperatorError(f"{op} of an empty list is undefined")
    if len(values) > MAX_LIST_ITEMS:
        raise OperatorError(f"{op}: list too long ({len(values)} items, limit {MAX_LIST_ITEMS})")
    return [parse_number(v) for v in values]


# --------------------------------------------------------------------------- arithmetic


@register(
    "calculate",
    "calculate(expression: str) -> str",
    "Evaluates an arithmetic expression exactly with rational numbers: numbers, + - * /, ** with "
    "integer exponents up to 64, parentheses and unary minus (also × ÷ ^). No names or functions. "
    "Returns the canonical number text: an int ('19'), an exact decimal ('2.5') or a reduced "
    "fraction ('7/3'). Fails on division by zero or anything that is not arithmetic.",
)
async def calculate(ctx: OpContext, expression: str) -> str:
    """Exact value of ``expression`` in canonical form."""
    return format_number(evaluate_expression(expression))


@register(
    "solve_equation",
    "solve_equation(equation: str, variable: str = 'x') -> str",
    "Solves one equation in one unknown exactly, e.g. '3x + 5 = 20' -> '5'. Implicit products "
    "like 3x or 2(x+1) are understood; powers of the unknown up to 4 are allowed. Returns the "
    "canonical number of the single rational solution, or several joined by ', ' in ascending "
    "order. Fails when `variable` does not occur, other unknowns occur, or there is no rational "
    "solution.",
)
async def solve_equation(ctx: OpContext, equation: str, variable: str = "x") -> str:
    """Rational solution(s) of ``equation`` for ``variable``."""
    return ", ".join(format_number(s) for s in solve_equation_exact(equation, variable))


# --------------------------------------------------------------------------- extraction


@register(
    "extract_numbers",
    "extract_numbers(text: str) -> list",
    "Returns every number written in the text, in order, as numbers (ints, or decimals for values "
    "like 2.5). A '-' directly before a digit is a sign only after a space, bracket or separator, "
    "so '10-3' gives [10, 3] and 'values: -3, 5' gives [-3, 5]. Returns [] when there is none.",
)
async def extract_numbers(ctx: OpContext, text: str) -> list:
    """All numbers in ``text``."""
    return text_tools.extract_numbers(text)


@register(
    "extract_number",
    "extract_number(text: str, index: int = 0) -> number",
    "Returns the number at position `index` among the numbers written in the text (0 = first, "
    "-1 = last), as an int or a decimal. Fails when the text has no number at that position.",
)
async def extract_number(ctx: OpContext, text: str, index: int = 0) -> int | float:
    """One number of ``text``."""
    return text_tools.extract_number(text, index)


@register(
    "extract_expression",
    "extract_expression(text: str) -> str",
    "Finds the arithmetic expression inside a sentence, e.g. 'What is 12 + 7 * 3?' -> "
    "'12 + 7 * 3': the stretch of numbers, operators and brackets with the most operators. Spoken "
    "operators (plus, minus, times, multiplied by, divided by, squared) are turned into symbols "
    "first. The result is ready for ops.calculate. Fails when the text has no number.",
)
async def extract_expression(ctx: OpContext, text: str) -> str:
    """The arithmetic expression of ``text``."""
    return text_tools.extract_expression(text)


@register(
    "extract_equation",
    "extract_equation(text: str) -> str",
    "Finds the equation inside a sentence: the stretch of numbers, one-letter unknowns, operators "
    "and brackets around the first '=', e.g. 'If 4x - 2 = 10, what is x?' -> '4x - 2 = 10'. The "
    "result is ready for ops.solve_equation. Fails when the text has no '='.",
)
async def extract_equation(ctx: OpContext, text: str) -> str:
    """The equation of ``text``."""
    return text_tools.extract_equation(text)


@register(
    "extract_list",
    "extract_list(text: str) -> list",
    "Returns the items of a list written in the text: the first [a, b, c] list (numbers become "
    "numbers, quotes are removed), otherwise the longest run of numbers separated by commas or "
    "'and' ('3, 9, 1 and 7' -> [3, 9, 1, 7]). Other numbers in the sentence are ignored. Fails "
    "when there is no list.",
)
async def extract_list(ctx: OpContext, text: str) -> list:
    """The list written in ``text``."""
    return text_tools.extract_list(text)


@register(
    "extract_quoted",
    "extract_quoted(text: str, index: int = 0) -> str",
    "Returns the quoted string at position `index` (0 = first, -1 = last) without its quotes; "
    "'...', \"...\", “...” and ‘...’ count, an apostrophe inside a word does not. Example: "
    "\"Count 'a' in 'banana'\" with index 1 -> 'banana'. Fails when there is no such quote.",
)
async def extract_quoted(ctx: OpContext, text: str, index: int = 0) -> str:
    """One quoted string of ``text``."""
    return text_tools.extract_quoted(text, index)


@register(
    "extract_units",
    "extract_units(text: str) -> list",
    "Returns the unit words of the text in order of appearance as canonical symbols (mm cm m km, "
    "mg g kg, ml l, s min h day; full names and plurals are recognised), e.g. 'How many grams "
    "are in 2 kg?' -> ['g', 'kg']. Returns [] when there is none.",
)
async def extract_units(ctx: OpContext, text: str) -> list:
    """Unit symbols of ``text``."""
    return text_tools.extract_units(text)


# --------------------------------------------------------------------------- lists


def _stat(name: str, description: str):
    """Register one statistic over a list of numbers (same argument rules for all of them)."""

    def wrap(fn):
        async def op(ctx: OpContext, values: list) -> str:
            return format_number(fn(_numbers(values, name)))

        op.__name__ = name
        op.__doc__ = f"{name} of a list of numbers, in canonical form."
        return register(name, f"{name}(values: list) -> str", description)(op)

    return wrap


@_stat("mean", "Returns the arithmetic mean (average) of a list of numbers, exactly, in canonical form.")
def _mean(xs: list[Fraction]) -> Fraction:
    return sum(xs, Fraction(0)) / len(xs)


@_stat(
    "median",
    "Returns the median (middle value after sorting; mean of the two middle values for an even "
    "count) of a list of numbers, exactly, in canonical form.",
)
def _median(xs: list[Fraction]) -> Fraction:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


@_stat("sum_list", "Returns the sum (total) of a list of numbers, exactly, in canonical form.")
def _sum(xs: list[Fraction]) -> Fraction:
    return sum(xs, Fraction(0))


@_stat("max_list", "Returns the largest (maximum) number of a list, in canonical form.")
def _max(xs: list[Fraction]) -> Fraction:
    return max(xs)


@_stat("min_list", "Returns the smallest (minimum) number of a list, in canonical form.")
def _min(xs: list[Fraction]) -> Fraction:
    return min(xs)


@register(
    "sort_list",
    "sort_list(values: list, descending: bool = False) -> list",
    "Returns the list sorted ascending (or descending): numbers by value, rendered in canonical "
    "form as strings; a list containing any non-number is sorted as text. Fails on non-lists.",
)
async def sort_list(ctx: OpContext, values: list, descending: bool = False) -> list:
    """``values`` sorted."""
    if not isinstance(values, list | tuple) or len(values) > MAX_LIST_ITEMS:
        raise OperatorError("sort_list expects a list (at most 10000 items)")
    try:
        exact = [parse_number(v) for v in values]
    except OperatorError:
        return sorted((str(v) for v in values), reverse=bool(descending))
    return [format_number(v) for v in sorted(exact, reverse=bool(descending))]


@register(
    "majority_vote",
    "majority_vote(candidates: list) -> str",
    "Returns the most common answer among the candidates (as text). Numbers that are equal in "
    "value ('4', '4.0', '8/2') count as one answer, other text is compared after stripping "
    "spaces; ties go to the answer seen first. Fails on an empty list.",
)
async def majority_vote(ctx: OpContext, candidates: list) -> str:
    """The most frequent candidate."""
    if not isinstance(candidates, list | tuple) or not candidates:
        raise OperatorError("majority_vote expects a non-empty list of candidates")
    keys, first_seen = [], {}
    for cand in candidates:
        text = str(cand).strip()
        try:
            key = ("n", parse_number(text))
        except OperatorError:
            key = ("t", text)
        keys.append(key)
        first_seen.setdefault(key, text)
    counts = Counter(keys)
    best = max(counts.values())
    winner = next(k for k in keys if counts[k] == best)
    return first_seen[winner]


# --------------------------------------------------------------------------- strings and units


@register(
    "reverse_text",
    "reverse_text(text: str) -> str",
    "Returns the text reversed character by character ('abc' -> 'cba').",
)
async def reverse_text(ctx: OpContext, text: str) -> str:
    """``text`` backwards."""
    return text_tools.check_text(text)[::-1]


@register("upper", "upper(text: str) -> str", "Returns the text in uppercase (capital letters).")
async def upper(ctx: OpContext, text: str) -> str:
    """``text`` in uppercase."""
    return text_tools.check_text(text).upper()


@register("lower", "lower(text: str) -> str", "Returns the text in lowercase (small letters).")
async def lower(ctx: OpContext, text: str) -> str:
    """``text`` in lowercase."""
    return text_tools.check_text(text).lower()


@register(
    "count_char",
    "count_char(text: str, char: str) -> int",
    "Returns how many times the single character `char` occurs in `text` (case-sensitive), e.g. "
    "count_char('banana', 'a') -> 3. Fails when `char` is not exactly one character.",
)
async def count_char(ctx: OpContext, text: str, char: str) -> int:
    """Occurrences of ``char`` in ``text``."""
    text = text_tools.check_text(text)
    if not isinstance(char, str) or len(char) != 1:
        raise OperatorError(f"count_char needs exactly one character, got {char!r}")
    return text.count(char)


@register(
    "convert_units",
    "convert_units(value: number, from_unit: str, to_unit: str) -> str",
    "Converts a quantity between units of the same kind exactly: length (mm cm m km), mass (mg g "
    "kg), volume (ml l) and time (s min h day); full names and plurals work ('kilometres'). "
    "Example: convert_units(2.5, 'kg', 'g') -> '2500'. Returns the canonical number text.",
)
async def convert_units(ctx: OpContext, value: int | float | str, from_unit: str, to_unit: str) -> str:
    """``value`` converted from ``from_unit`` to ``to_unit``."""
    return format_number(text_tools.convert_exact(parse_number(value), from_unit, to_unit))


# --------------------------------------------------------------------------- code


@register(
    "run_python",
    "run_python(code: str, stdin: str = '') -> str",
    "Runs a Python program in the sandbox (time, memory and output limits; no network or files) "
    "with the given standard input and returns what it printed. Fails with the error message "
    "when the program raises, times out or exceeds a limit.",
)
async def run_python(ctx: OpContext, code: str, stdin: str = "") -> str:
    """Standard output of ``code`` run in the sandbox."""
    if ctx.run_code is None:
        raise OperatorError("run_python is unavailable: this runtime has no sandboxed code runner")
    if not isinstance(code, str) or not isinstance(stdin, str):
        raise OperatorError("run_python expects (code: str, stdin: str)")
    result: CodeResult = await ctx.run_code(code, stdin=stdin)
    if not result.ok:
        detail = result.error_message or result.stderr.strip().splitlines()[-1:] or "failed"
        raise OperatorError(f"python {result.error_kind or 'crash'}: {detail}", raw=result.stderr)
    return result.stdout
