"""Scorers on hand-written cases: GSM8K numbers, MATH LaTeX equivalence, SQuAD F1."""

from __future__ import annotations

import pytest

from workflow_rl.benchmarks.scoring import (
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
from workflow_rl.errors import WorkflowRLError


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
