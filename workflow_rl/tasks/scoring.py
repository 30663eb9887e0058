"""Answer scorers shared by the JSONL benchmarks: exact match, numeric, token F1, math, code tests.

- ``f1`` / ``exact`` use SQuAD-style normalisation (lower case, no punctuation, no articles
  a/an/the, single spaces), as the HotpotQA and DROP evaluations do; F1 is the max over references.
- ``numeric`` compares the last number of the output with the reference (commas, currency, units and
  simple fractions such as ``3/4`` are understood; relative tolerance 1e-6).
- ``math`` compares with math-verify (``\\boxed{...}`` answers, equivalent LaTeX forms); an output that
  is one bare LaTeX expression (``\\frac{1}{2}``, ``(1, 2)``, ``[0, \\infty)``, ``x^2+2x+1``) is parsed as LaTeX.
- ``code`` runs the tests in the sandbox (see :func:`score_code`).
"""

from __future__ import annotations

import collections
import re
import string
import threading
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from operators.base import OpContext
from workflow_rl.errors import WorkflowRLError
from workflow_rl.tasks.base import Score

SCORERS = ("exact", "numeric", "f1", "math", "code")
"""Scorer names accepted by the generic JSONL task."""

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)
# A number: optional sign, digits with optional thousands commas, optional decimals, optional /denominator.
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|-?\.\d+")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower, strip punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _references(reference: Any) -> list[str]:
    if isinstance(reference, (list, tuple)):
        refs = [str(r) for r in reference]
        return refs or [""]
    return [str(reference)]


def exact_match(prediction: str, reference: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised reference."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in _references(reference)))


def _f1(prediction: str, reference: str) -> float:
    pred_tokens, ref_tokens = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(ref_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, reference: str | Sequence[str]) -> float:
    """Token-level F1 (SQuAD), max over the references."""
    return max(_f1(prediction, r) for r in _references(reference))


def parse_number(text: str) -> float | None:
    """The number in a short string: ``"1,234"``, ``"$12.50"``, ``"3/4"``, ``"-7 apples"``; else None."""
    matches = _NUMBER.findall(str(text))
    return _to_float(matches[-1]) if matches else None


def _to_float(token: str) -> float | None:
    token = token.replace(",", "").replace(" ", "")
    try:
        if "/" in token:
            num, den = token.split("/")
            return float(Fraction(num) / Fraction(den)) if float(den) != 0 else None
        return float(token)
    except (ValueError, ZeroDivisionError):
        return None


def extract_final_number(output: str) -> float | None:
    """The answer number of a free-text output: a ``\\boxed{}`` or ``####`` answer if present, else the last number."""
    text = str(output)
    boxed = last_boxed(text)
    if boxed is not None:
        text = boxed
    elif "####" in text:
        text = text.rsplit("####", 1)[1]
    # "\frac{3}{4}" -> "3/4" so that LaTeX fractions in boxes count as numbers.
    text = re.sub(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}", r"\1/\2", text)
    return parse_number(text)


def numeric_match(output: str, reference: Any, rel_tol: float = 1e-6) -> Score:
    """Reward 1 when the output's final number equals the reference number (relative tolerance)."""
    ref = reference if isinstance(reference, (int, float)) else parse_number(str(reference))
    if ref is None:
        raise WorkflowRLError(f"reference {reference!r} is not a number")
    got = extract_final_number(output)
    if got is None:
        return Score(0.0, None)
    ok = abs(got - float(ref)) <= rel_tol * max(1.0, abs(float(ref)))
    shown = str(int(got)) if got == int(got) else str(got)
    return Score(float(ok), shown)


def gsm8k_reference(answer_field: str) -> str:
    """The final answer of a GSM8K ``answer`` field: the text after ``####``, commas removed."""
    if "####" not in answer_field:
        raise ValueError("no '####' in the answer field")
    return answer_field.rsplit("####", 1)[1].strip().replace(",", "")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, else None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[brace + 1 : i]
    return None


# LaTeX commands (``\\frac``, ``\\infty``, ``\\left``), and text-like commands whose argument is words by design.
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_LATEX_TEXT_ARG = re.compile(r"\\(?:text|textrm|textbf|textit|mathrm|mathbf|mathit|operatorname|mbox)\s*\{[^{}]*\}")
# What math-verify already finds without help: math delimiters and boxes.
_LATEX_DELIMITED = re.compile(r"\$|\\\(|\\\[|\\boxed|\\fbox")
# What only a LaTeX parse reads right: commands, powers, groups, tuples/intervals, variables.
_LATEX_SIGNAL = re.compile(r"[\\^_{}()\[\]A-Za-z]")


def bare_latex(output: str) -> str | None:
    """The output as one LaTeX expression when it is bare LaTeX (no ``$``/``\\(``/``\\[``/``\\boxed``), else None.

    Bare means a single line with no prose: once LaTeX command names and ``\\text{...}``-like arguments are
    removed, no run of two letters remains (``\\sqrt{2}``, ``(1, 2)``, ``[0, \\infty)``, ``x^2+2x+1`` are
    bare; ``The answer is 3`` is not). It must also hold something that only a LaTeX parse reads right
    (a command, ``^``, ``_``, braces, brackets or a letter), so plain numbers and arithmetic such as
    ``1,234``, ``3/4`` or ``48 + 24 = 72`` keep math-verify's number extraction. A trailing full stop is
    dropped (``\\frac{1}{2}.`` does not parse as LaTeX).
    """
    text = str(output).strip().removesuffix(".").rstrip()
    if not text or "\n" in text or _LATEX_DELIMITED.search(text):
        return None
    letters_left = _LATEX_COMMAND.sub(" ", _LATEX_TEXT_ARG.sub(" ", text))
    # Two adjacent letters outside commands read as a word; "xy" as a product is given up for "on" vs "no"
    # (which LaTeX would read as the equal products o*n and n*o).
    if re.search(r"[A-Za-z]{2,}", letters_left) or not _LATEX_SIGNAL.search(text):
        return None
    return text


def math_match(output: str, reference: str) -> Score:
    """math-verify equivalence of the output's answer and the reference (a boxed solution or an answer).

    The reference is read as LaTeX (its last ``\\boxed{}``, else the whole text between ``$``). The output's
    answer is its last ``\\boxed{}``; else, when the whole output is bare LaTeX (:func:`bare_latex`), that
    expression read as LaTeX; else whatever math-verify extracts from the free text (delimited LaTeX, the
    last number or arithmetic expression). A bare-LaTeX output that does not parse as LaTeX falls back to
    the free-text extraction, as before.
    """
    from math_verify import LatexExtractionConfig, parse, verify

    # math-verify's timeouts use SIGALRM, which only works in the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    ref_text = last_boxed(str(reference))
    gold = parse(f"${ref_text if ref_text is not None else reference}$", parsing_timeout=timeout)
    answer = last_boxed(str(output))
    pred: list[Any] = []
    bare = bare_latex(str(output)) if answer is None else None
    if bare is not None:
        # LaTeX extraction only: the expression extractor would also offer pieces of it ("2" out of
        # "2\\sqrt{2}", "2" out of "(1, 2)"), and a piece must never stand in for the whole answer.
        pred = parse(f"${bare}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=timeout)
        # A failed parse leaves only math-verify's fallback string; the free-text reading then decides.
        if all(isinstance(p, str) for p in pred):
            pred = []
    if not pred:
        pred = parse(str(output) if answer is None else f"$\\boxed{{{answer}}}$", parsing_timeout=timeout)
    if not gold or not pred:
        return Score(0.0, answer if answer is not None else (str(pred[-1]) if pred else None))
    ok = verify(gold, pred, timeout_seconds=timeout)
    return Score(float(ok), str(pred[-1]))


async def score_code(ctx: OpContext, solution: str | None, tests: str, timeout_s: float = 10.0) -> Score:
    """Run ``solution`` followed by ``tests`` (a script of asserts) in the sandbox: 1 when it exits cleanly."""
    if not solution:
        return Score(0.0, None)
    if ctx.run_code is None:
        raise WorkflowRLError("code scoring needs a sandbox runner (ctx.run_code is None)")
    result = await ctx.run_code(f"{solution}\n\n{tests}\n", timeout_s=timeout_s)
    return Score(1.0 if result.ok else 0.0, None)


def score_text(scorer: str, output: str | None, reference: Any) -> Score:
    """Score with a text scorer (exact, numeric, f1, math); ``code`` is async (:func:`score_code`)."""
    if output is None:
        return Score(0.0, None)
    if scorer == "exact":
        return Score(exact_match(output, reference), normalize_answer(output))
    if scorer == "f1":
        return Score(f1_score(output, reference), normalize_answer(output))
    if scorer == "numeric":
        return numeric_match(output, reference)
    if scorer == "math":
        return math_match(output, str(reference))
    raise WorkflowRLError(f"unknown scorer {scorer!r}; choose one of {', '.join(SCORERS)}")
