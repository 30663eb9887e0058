"""Scorers on hand-written cases: GSM8K numbers, MATH LaTeX equivalence, SQuAD F1."""

from __future__ import annotations

import threading

import pytest

from workflow_rl.errors import WorkflowRLError
from workflow_rl.tasks.scoring import (
    bare_latex,
    exact_match,
    extract_final_number,
    f1_score,
    gsm8k_reference,
    last_boxed,
    math_match,
    normalize_answer,
    numeric_match,
    parse_number,
    score_text,
)


@pytest.mark.parametrize(
    "output, reference, reward",
    [
        ("The answer is 18.", "18", 1.0),
        ("She pays $1,234.50 in total", "1234.5", 1.0),
        ("1,000,000", "1000000", 1.0),
        ("It takes 45 minutes", "45", 1.0),
        ("18 km/h", "18", 1.0),
        ("3/4", "0.75", 1.0),
        ("\\boxed{\\frac{3}{4}}", "0.75", 1.0),
        ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72", 1.0),
        ("-5 degrees", "-5", 1.0),
        ("18.0", "18", 1.0),
        ("The answer is 17", "18", 0.0),
        ("no number here", "18", 0.0),
        ("48 in April, so 72 altogether", "48", 0.0),  # the last number counts
    ],
)
def test_numeric_match(output, reference, reward):
    assert numeric_match(output, reference).reward == reward


def test_numeric_answer_shown_and_bad_reference():
    assert numeric_match("so 72 clips", "72").answer == "72"
    assert numeric_match("0.5", "1/2").answer == "0.5"
    with pytest.raises(WorkflowRLError, match="not a number"):
        numeric_match("1", "many")


def test_parse_number_and_gsm8k_reference():
    assert parse_number("$12.50") == 12.5
    assert parse_number("7/2 cups") == 3.5
    assert parse_number(".5") == 0.5
    assert parse_number("none") is None
    assert extract_final_number("5 apples #### 1,024") == 1024
    assert gsm8k_reference("48/2 = <<48/2=24>>24 clips\n#### 1,072") == "1072"
    with pytest.raises(ValueError):
        gsm8k_reference("no marker")


@pytest.mark.parametrize(
    "output, reference, reward",
    [
        ("\\boxed{\\frac{1}{2}}", "The answer is $\\boxed{\\frac12}$.", 1.0),
        ("\\boxed{\\dfrac{2}{4}}", "\\frac{1}{2}", 1.0),
        ("0.5", "\\frac{1}{2}", 1.0),
        ("so the result is \\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),
        ("\\boxed{x^2+2x+1}", "(x+1)^2", 1.0),
        ("\\boxed{(1,2)}", "(1, 2)", 1.0),
        ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", 0.0),
        ("\\boxed{5}", "\\boxed{6}", 0.0),
        ("I don't know", "\\frac{1}{2}", 0.0),
    ],
)
def test_math_match_equivalent_latex(output, reference, reward):
    assert math_match(output, reference).reward == reward



# Each form of bare LaTeX answer (no `$`, no `\boxed{}`) against an equal and an unequal reference; the
# unequal ones are the near misses a lenient reading would let through (swapped tuple, open vs closed end).
@pytest.mark.parametrize(
    "output, reference, reward",
    [
        # fraction
        ("\\frac{1}{2}", "\\frac{1}{2}", 1.0),
        ("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", 1.0),
        ("\\frac{a}{2}", "\\frac{a}{2}", 1.0),
        ("\\frac{1}{3}", "\\frac{1}{2}", 0.0),
        ("\\frac{a}{2}", "\\frac{a}{3}", 0.0),
        # root
        ("\\sqrt{2}", "\\sqrt{2}", 1.0),
        ("2\\sqrt{2}", "\\sqrt{8}", 1.0),
        ("\\sqrt{2}", "\\sqrt{3}", 0.0),
        ("2\\sqrt{2}", "2", 0.0),  # the free-text reading took the leading "2" as the answer
        # tuple
        ("(1, 2)", "(1,2)", 1.0),
        ("(1,2,3)", "(1, 2, 3)", 1.0),
        ("(1,2)", "(2,1)", 0.0),
        ("(1,2,3)", "(1,3,2)", 0.0),
        ("(1, 2)", "2", 0.0),  # the free-text reading took the last number
        # interval
        ("[0, \\infty)", "[0,\\infty)", 1.0),
        ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2)\\cup(3,\\infty)", 1.0),
        ("x \\in [0, 1)", "[0,1)", 1.0),
        ("[0,1)", "[0,1]", 0.0),
        ("(0, 1]", "[0,1]", 0.0),
        ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2]\\cup(3,\\infty)", 0.0),
        # polynomial
        ("x^2+2x+1", "(x+1)^2", 1.0),
        ("2x+1", "1+2x", 1.0),
        ("x^2 + 2x + 1", "x^2+2x+2", 0.0),
        ("x^3-1", "(x-1)(x^2+x+1)", 1.0),
        ("x^3+1", "(x-1)(x^2+x+1)", 0.0),
    ],
)
def test_math_match_bare_latex_output(output, reference, reward):
    assert math_match(output, reference).reward == reward


@pytest.mark.parametrize(
    "bare, reference",
    [
        ("\\frac{1}{2}", "\\frac{1}{3}"),
        ("\\sqrt{2}", "\\sqrt{3}"),
        ("(1, 2)", "(2, 1)"),
        ("[0, \\infty)", "(0, \\infty)"),
        ("x^2+2x+1", "x^2+2x+2"),
    ],
)
def test_math_match_bare_latex_same_verdict_with_delimiters(bare, reference):
    """A bare answer and the same answer in `$...$` or `\\boxed{}` score alike, on either side."""
    outputs = [bare, f"${bare}$", f"\\boxed{{{bare}}}", f"The answer is $\\boxed{{{bare}}}$."]
    for output in outputs:
        for ref in (bare, f"${bare}$", f"\\boxed{{{bare}}}", f"so $\\boxed{{{bare}}}$"):
            assert math_match(output, ref).reward == 1.0, (output, ref)
        for ref in (reference, f"${reference}$", f"\\boxed{{{reference}}}"):
            assert math_match(output, ref).reward == 0.0, (output, ref)


def test_bare_latex_detection():
    assert bare_latex("  \\frac{1}{2}. ") == "\\frac{1}{2}"  # a closing full stop is not part of the answer
    assert bare_latex("(1, 2)") == "(1, 2)"
    assert bare_latex("5\\text{ cm}") == "5\\text{ cm}"  # words inside \text{} are LaTeX, not prose
    # Already delimited: math-verify's own extraction handles these.
    assert bare_latex("$\\sqrt{2}$") is None and bare_latex("\\boxed{2}") is None
    assert bare_latex("\\(\\sqrt{2}\\)") is None and bare_latex("\\[x^2\\]") is None
    # Prose, several lines, and plain numbers or arithmetic keep the free-text reading.
    assert bare_latex("The answer is \\sqrt{2}") is None
    assert bare_latex("x^2\n= 4") is None
    for plain in ("18", "1,234", "3/4", "-5", "48 + 24 = 72", ""):
        assert bare_latex(plain) is None, plain
    # Two-letter runs read as words: "on" vs "no" would otherwise be the equal products o*n and n*o.
    assert bare_latex("on") is None and math_match("on", "no").reward == 0.0


def test_math_match_bare_latex_edge_cases():
    assert math_match("\\frac{1}{2}.", "0.5").reward == 1.0
    assert math_match("(1, 2)", "(1,2)").answer == "(1, 2)"
    # Malformed LaTeX falls back to the free-text reading, as before this form was recognised.
    assert math_match("\\frac{1}{2", "\\frac{1}{2}").reward == 0.0
    assert math_match("2\\sqrt{", "2").answer == "2"
    # Scoring from a worker thread runs without math-verify's SIGALRM timeout and still reads the form.
    results = []
    worker = threading.Thread(target=lambda: results.append(math_match("[0, \\infty)", "[0,\\infty)").reward))
    worker.start()
    worker.join()
    assert results == [1.0]


def test_last_boxed_nested_braces():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{\\sqrt{2}}} c") == "\\frac{1}{\\sqrt{2}}"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("none") is None and last_boxed("\\boxed{unclosed") is None


def test_f1_and_exact_hand_computed():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the eiffel tower.", "Eiffel Tower") == 1.0
    # pred {eiffel, tower, paris} vs ref {eiffel, tower}: P = 2/3, R = 1, F1 = 0.8
    assert f1_score("Eiffel Tower, Paris", "the Eiffel Tower") == pytest.approx(0.8)
    # max over references
    assert f1_score("Paris", ["London", "Paris France"]) == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert f1_score("", "") == 1.0 and f1_score("a", "x") == 0.0
    assert f1_score("1,000 people", "1000 people") == 1.0  # punctuation removed before tokenising


def test_score_text_dispatch():
    assert score_text("exact", "Yes.", "yes").reward == 1.0
    assert score_text("f1", None, "x").reward == 0.0
    with pytest.raises(WorkflowRLError, match="unknown scorer"):
        score_text("bleu", "a", "a")
