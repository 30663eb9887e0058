"""Tool operators on hand-written cases, including every error path that matters."""

from __future__ import annotations

import asyncio
import json
from fractions import Fraction

import pytest

from operators.base import OpContext, OperatorError
from operators.registry import describe_operators, get_operators
from operators.tools_numbers import format_number, numbers_equal, parse_number

TOOL_NAMES = (
    "calculate solve_equation extract_numbers extract_number extract_expression extract_equation "
    "extract_list extract_quoted extract_units mean median sum_list max_list min_list sort_list "
    "majority_vote reverse_text upper lower count_char convert_units run_python"
).split()


def call(name: str, *args, ctx: OpContext | None = None, **kwargs):
    """Run one registered operator on the host, as the runtime would."""
    op = get_operators([name])[name]
    return asyncio.run(op.fn(ctx or OpContext(), *args, **kwargs))


def test_registry_has_every_tool_with_a_description():
    ops = get_operators(TOOL_NAMES)
    for name, op in ops.items():
        assert op.kind == "tool"
        assert op.signature.startswith(f"{name}(")
        assert len(op.description) > 30
    text = describe_operators(["calculate", "mean"])
    assert text.splitlines()[0].startswith("- ops.calculate(expression: str) -> str: Evaluates")
    with pytest.raises(KeyError, match="no_such_op"):
        get_operators(["no_such_op"])


# ------------------------------------------------------------------ canonical numbers


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Fraction(4), "4"),
        (Fraction(-12), "-12"),
        (Fraction(5, 2), "2.5"),
        (Fraction(-1, 8), "-0.125"),
        (Fraction(7, 3), "7/3"),
        (Fraction(-1, 6), "-1/6"),
        (Fraction(3, 40), "0.075"),
        (Fraction(0), "0"),
    ],
)
def test_format_number_is_canonical(value, text):
    assert format_number(value) == text


def test_parse_number_and_equality():
    assert parse_number("8/2") == 4
    assert parse_number(" 2.50 ") == Fraction(5, 2)
    assert parse_number(0.1) == Fraction(1, 10)
    assert parse_number("1e3") == 1000
    assert numbers_equal("4", "4.0") and numbers_equal("8/2", 4) and numbers_equal("2.5", "5/2")
    assert not numbers_equal("4", "four") and not numbers_equal("4", "4.01")
    for bad in ("four", True, None, float("nan"), "1/0"):
        with pytest.raises(OperatorError):
            parse_number(bad)


# ------------------------------------------------------------------ calculator and solver


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("12 + 7 * 3", "33"),
        ("(5 + 9) * 2", "28"),
        ("1/3 + 1/6", "0.5"),
        ("7 / 3", "7/3"),
        ("-0.125 * 3", "-0.375"),
        ("2 ** 10 / 8", "128"),
        ("2^-2", "0.25"),
        ("6 × 7 ÷ 3 − 1", "13"),
        ("-(-4)", "4"),
        ("0.1 + 0.2", "0.3"),
    ],
)
def test_calculate(expression, expected):
    assert call("calculate", expression) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero"),
        ("x + 1", "unknown name 'x'"),
        ("abs(-3)", "unsupported syntax"),
        ("2 ** 100", "exponent 100 is out of range"),
        ("9 ** 64 ** 64", "exponent"),
        ("99999999999 ** 64 * 99999999999 ** 64 * 99999999999 ** 64 * 99999999999 ** 64", "too large"),
        ("2 ** 0.5", "integer exponents"),
        ("3 % 2", "operator Mod is not supported"),
        ("'a' + 'b'", "unsupported literal"),
        ("(1 +", "cannot parse"),
        ("", "empty"),
        ("1+" * 300 + "1", "too long"),
        ("0 ** -1", "division by zero"),
    ],
)
def test_calculate_errors(expression, message):
    with pytest.raises(OperatorError, match=message):
        call("calculate", expression)


def test_calculate_rejects_non_strings():
    with pytest.raises(OperatorError, match="expects a string"):
        call("calculate", 3)


@pytest.mark.parametrize(
    ("equation", "variable", "expected"),
    [
        ("3x + 5 = 20", "x", "5"),
        ("5x - 2 = 4x - 8", "x", "-6"),
        ("2(x + 1) = 3", "x", "0.5"),
        ("x/3 = 2/9", "x", "2/3"),
        ("x**2 = 4", "x", "-2, 2"),
        ("x^2 - 5x + 6 = 0", "x", "2, 3"),
        ("4y - 2 = 10", "y", "3"),
        ("6/x = 2", "x", "3"),
        ("-(x - 4) = 2", "x", "2"),
        ("3 = 2x - 1", "x", "2"),
        ("0.5x + 1 = x/4 + 3", "x", "8"),
        ("2 * (3 * x) = x / 2 + 11", "x", "2"),
    ],
)
def test_solve_equation(equation, variable, expected):
    assert call("solve_equation", equation, variable) == expected


@pytest.mark.parametrize(
    ("equation", "variable", "message"),
    [
        ("3x + 5", "x", "exactly one '='"),
        ("x = 1 = 2", "x", "exactly one '='"),
        ("4y - 2 = 10", "x", "variable 'x' does not occur.*unknowns: y"),
        ("x + y = 3", "x", "other unknowns \\(y\\)"),
        ("x + 1 = x + 2", "x", "no solution"),
        ("2x = x + x", "x", "identity"),
        ("x**2 = 2", "x", "no rational solution"),
        ("x**9 = 2", "x", "exponents must be integers 0..4"),
        ("x/0 = 1", "x", "division by zero"),
        ("__import__('os') = 1", "x", "unsupported"),
    ],
)
def test_solve_equation_errors(equation, variable, message):
    with pytest.raises(OperatorError, match=message):
        call("solve_equation", equation, variable)


# ------------------------------------------------------------------ extraction


def test_extract_numbers_signs_and_decimals():
    text = "Here are 5 numbers: -3, 4.5, 10-3 and x-7 (also [-2])."
    assert call("extract_numbers", text) == [5, -3, 4.5, 10, 3, 7, -2]
    assert call("extract_numbers", "no digits here") == []
    assert call("extract_number", "from 3 to 9 by 2", 1) == 9
    assert call("extract_number", "from 3 to 9 by 2", index=-1) == 2
    with pytest.raises(OperatorError, match="index 3 out of range: the text has 3"):
        call("extract_number", "from 3 to 9 by 2", 3)
    with pytest.raises(OperatorError, match="no number"):
        call("extract_number", "none")
    with pytest.raises(OperatorError, match="must be a string"):
        call("extract_numbers", 42)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What is 12 + 7 * 3?", "12 + 7 * 3"),
        ("Compute (5 + 9) * 2.", "(5 + 9) * 2"),
        ("Calculate (38 minus 7) times 9.", "(38 - 7) * 9"),
        ("What is 6 divided by 4 plus 1?", "6 / 4 + 1"),
        ("12 + 7 * 3 = ?", "12 + 7 * 3"),
        ("Take 3, then 4 + 5 and report.", "4 + 5"),
        ("It is 7.", "7"),
        ("What is 5 squared plus 2^3?", "5 **2 + 2**3"),
    ],
)
def test_extract_expression(text, expected):
    assert call("extract_expression", text) == expected


def test_extract_expression_feeds_calculate_and_fails_without_numbers():
    assert call("calculate", call("extract_expression", "What is 5 squared plus 2^3?")) == "33"
    with pytest.raises(OperatorError, match="no arithmetic expression"):
        call("extract_expression", "What is love?")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Solve for x: 3x + 5 = 20.", "3x + 5 = 20"),
        ("If 4x - 2 = 10, what is x?", "4x - 2 = 10"),
        ("What value of x makes 9x = -63 true?", "9x = -63"),
        ("Given 6x + 10 = 2x - 2, find the number x.", "6x + 10 = 2x - 2"),
        ("Find x when 2(x + 1) = 8.", "2(x + 1) = 8"),
    ],
)
def test_extract_equation(text, expected):
    assert call("extract_equation", text) == expected


def test_extract_equation_errors():
    with pytest.raises(OperatorError, match="no equation"):
        call("extract_equation", "What is 3 + 4?")
    with pytest.raises(OperatorError, match="no expression on one side"):
        call("extract_equation", "12 + 7 * 3 = ?")


def test_extract_list():
    assert call("extract_list", "Find the mean of [4, 8, 6].") == [4, 8, 6]
    assert call("extract_list", "Here are 5 numbers: 3, 9, 1, 7 and 5. Which is largest?") == [3, 9, 1, 7, 5]
    assert call("extract_list", "Take 2.5, -1 and 4 and report the sum.") == [2.5, -1, 4]
    assert call("extract_list", "Sort ['pear', \"fig\", 3].") == ["pear", "fig", 3]
    with pytest.raises(OperatorError, match="no list"):
        call("extract_list", "Only 4 here.")


def test_extract_quoted():
    text = "What's the count of 'a' in \u201cbanana\u201d?"
    assert call("extract_quoted", text) == "a"
    assert call("extract_quoted", text, 1) == "banana"
    assert call("extract_quoted", 'Say "hi"', -1) == "hi"
    with pytest.raises(OperatorError, match="no quoted text"):
        call("extract_quoted", "Don't quote me")
    with pytest.raises(OperatorError, match="index 2 out of range"):
        call("extract_quoted", text, 2)
    with pytest.raises(OperatorError, match="index must be an int"):
        call("extract_quoted", text, "1")


def test_extract_units():
    assert call("extract_units", "How many grams are in 2.5 kilograms?") == ["g", "kg"]
    assert call("extract_units", "Change 3.8 min into s.") == ["min", "s"]
    assert call("extract_units", "What's 5 hours in minutes, metres or Litres?") == ["h", "min", "m", "l"]
    assert call("extract_units", "What is the sum of 4 and 5?") == []


# ------------------------------------------------------------------ lists, strings, units


def test_statistics():
    assert call("mean", [22, 53, 14, 45]) == "33.5"
    assert call("mean", ["1", 2, 2.5]) == "11/6"
    assert call("median", [33, 15, 56, 39]) == "36"
    assert call("median", [3, 1, 2]) == "2"
    assert call("sum_list", [1, 2.5, "1/2"]) == "4"
    assert call("max_list", [-3, -1.5, -2]) == "-1.5"
    assert call("min_list", [4, "7/2", 5]) == "3.5"
    assert call("sort_list", [3, "2.50", 10]) == ["2.5", "3", "10"]
    assert call("sort_list", [3, 10, 1], descending=True) == ["10", "3", "1"]
    assert call("sort_list", ["pear", "fig", 3]) == ["3", "fig", "pear"]


@pytest.mark.parametrize(
    ("name", "values", "message"),
    [
        ("mean", [], "empty list"),
        ("mean", "1, 2, 3", "expects a list of numbers, got a string"),
        ("median", [1, "two"], "expected a number, got the text 'two'"),
        ("sum_list", {"a": 1}, "got a dict"),
        ("max_list", [True], "boolean"),
        ("sort_list", "abc", "expects a list"),
    ],
)
def test_list_errors(name, values, message):
    with pytest.raises(OperatorError, match=message):
        call(name, values)


def test_majority_vote():
    assert call("majority_vote", ["4", "5", "4.0", "5", "8/2"]) == "4"
    assert call("majority_vote", ["b", "a", " a", "b "]) == "b"  # tie -> first seen
    assert call("majority_vote", [7, "7", "x"]) == "7"
    with pytest.raises(OperatorError, match="non-empty list"):
        call("majority_vote", [])


def test_string_tools():
    assert call("reverse_text", "dutito") == "otitud"
    assert call("upper", "zalane") == "ZALANE"
    assert call("lower", "MiXeD") == "mixed"
    assert call("count_char", "banana", "a") == 3
    assert call("count_char", "Banana", "b") == 0
    with pytest.raises(OperatorError, match="exactly one character, got 'an'"):
        call("count_char", "banana", "an")
    with pytest.raises(OperatorError, match="must be a string"):
        call("upper", ["a"])
    with pytest.raises(OperatorError, match="too long"):
        call("reverse_text", "x" * 30_000)


def test_convert_units():
    assert call("convert_units", 2.5, "kg", "g") == "2500"
    assert call("convert_units", "500", "mg", "g") == "0.5"
    assert call("convert_units", 390, "seconds", "min") == "6.5"
    assert call("convert_units", 1, "Kilometres", "millimetres") == "1000000"
    assert call("convert_units", 100, "s", "h") == "1/36"
    with pytest.raises(OperatorError, match=r"cannot convert kg \(mass\) to m \(length\)"):
        call("convert_units", 1, "kg", "m")
    with pytest.raises(OperatorError, match="unknown unit 'parsec'"):
        call("convert_units", 1, "parsec", "m")


def test_results_are_json_able():
    for value in (
        call("extract_numbers", "1 and 2.5"),
        call("sort_list", [2, 1]),
        call("count_char", "aa", "a"),
    ):
        assert json.loads(json.dumps(value)) == value


# ------------------------------------------------------------------ run_python


def test_run_python_needs_a_code_runner():
    with pytest.raises(OperatorError, match="no sandboxed code runner"):
        call("run_python", "print(1)")


def test_run_python_runs_in_the_sandbox():
    from operators.runtime import Sandbox

    async def scenario():
        sandbox = Sandbox(get_operators(["run_python"]), workers=1)
        try:
            ctx = OpContext(run_code=sandbox.run_code)
            op = get_operators(["run_python"])["run_python"].fn
            reversed_line = await op(ctx, "print(input()[::-1])", "abc")
            with pytest.raises(OperatorError, match="ValueError: boom") as info:
                await op(ctx, "raise ValueError('boom')")
            return reversed_line, info.value.raw
        finally:
            sandbox.close()

    output, raw = asyncio.run(scenario())
    assert output == "cba\n"
    assert "Traceback" in raw


# ------------------------------------------------------------------ hostile inputs


@pytest.mark.timeout(60)  # a hang guard: each case below used to run for minutes (backtracking, expand)
@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("extract_list", ("1" * 19_000,), "no list"),
        ("extract_numbers", ("7" * 5_000,), "number too long"),
        ("extract_list", ("[" + "1" * 5_000 + ", 2]",), "number too long"),
        ("solve_equation", ("(" * 10 + "x+1" + ")**4" * 10 + " = 1",), "degree up to 1048576 is too high"),
        ("solve_equation", ("(x+1)**4**4 = 1",), "exponents must be integers"),
        ("calculate", ("-" * 498 + "1",), None),
        ("calculate", ("(" * 150 + "1" + ")" * 150,), None),
        ("calculate", ("(2**64)**64",), "too large"),
        ("mean", (["9" * 600],), "number too long"),
    ],
)
def test_hostile_inputs_fail_fast_with_operator_errors(name, args, message):
    if message is None:
        assert call(name, *args) == "1"
    else:
        with pytest.raises(OperatorError, match=message):
            call(name, *args)


def test_register_refuses_mismatched_signature_and_empty_description():
    from operators.registry import register

    with pytest.raises(ValueError, match="must start with 'calc_x\\('"):
        register("calc_x", "calculate(expression: str) -> str", "Evaluates.")
    with pytest.raises(ValueError, match="needs a one-paragraph description"):
        register("calc_x", "calc_x() -> str", "  ")

    async def calculate_again(ctx, expression):
        return expression

    with pytest.raises(ValueError, match="'calculate' is registered twice"):
        register("calculate", "calculate(expression: str) -> str", "Another calculator.")(calculate_again)
