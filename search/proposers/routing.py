"""Model-free routing edits: ``if "<cue>" in problem: return <pipeline>``.

Used by the mutation proposer. The cue is a word of one failing problem that is common among the
failures and rare among solved problems (:func:`cue_words`). The pipeline is a type-checked
composition of operators drawn from a softmax over a score that uses only the operator registry:
how many word stems the failing problems share with an operator's name and description
(:func:`description_relevance`: "median" -> ``ops.median``, "capital letters" -> ``ops.upper``),
"feeds" links where one operator's description names the next ("ready for ops.solve_equation"),
and a preference for two-step extract -> compute pipelines that end in text (:class:`RoutingPrior`).

Whether a pipeline's output counts as a failing example's expected answer is the benchmark's call,
not search's: callers pass an :data:`AnswerCheck` (``workflow_rl.tasks.base.answer_check`` gives a
benchmark's own; calc compares numbers by exact value).
"""

from __future__ import annotations

import ast
import functools
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from search.base import FailedExample
from search.proposers.signatures import ANY, OpSignature

WORD = re.compile(r"[A-Za-z]{3,}")
"""Words that can serve as routing cues."""



@dataclass(frozen=True)
class RoutingPrior:
    """How a routing edit ranks candidate pipelines before running any (scores go through a softmax).

    The defaults were tuned by hand on calc when routing was written (commit b873504; the
    mutation proposer's docstring has the measurement), where extract -> compute is the typical
    recipe. Another benchmark's operator set may want other values: pass a prior to
    :class:`search.proposers.mutations.MutationProposer`.
    """

    length_bonus: Mapping[int, float] = field(default_factory=lambda: {1: -1.0, 2: 0.0, 3: -1.5})
    """Score added to a pipeline by its number of operators (extract -> compute is typical)."""
    other_length_bonus: float = -3.0
    """Score of a pipeline length missing from ``length_bonus``."""
    feeds_bonus: float = 1.0
    """Score added for each step whose description names the next operator."""
    temperature: float = 0.5
    """Softmax temperature over pipeline scores and extractor relevance (lower = greedier)."""


DEFAULT_PRIOR = RoutingPrior()
"""Today's calc-tuned values."""

Call = Callable[[str, list[ast.expr]], ast.expr]
"""Builds ``await ops.<name>(*args)``."""

AnswerCheck = Callable[[Any, str], bool]
"""``(output, expected) -> bool``: whether a pipeline's output is the failing example's expected
answer. The benchmark supplies it (it knows that '4.0' is '4' in calc, or that case matters)."""


def exact_answer(output: Any, expected: str) -> bool:
    """The default :data:`AnswerCheck`: equal text after stripping whitespace, nothing looser."""
    return str(output).strip() == str(expected).strip()


def cue_words(failures: list[str], passes: list[str], limit: int = 8) -> list[str]:
    """Words found in many failing problems and few solved ones, best first (ties alphabetical)."""
    fail = Counter(w for text in failures for w in sorted(set(WORD.findall(text))))
    ok = Counter(w for text in passes for w in sorted(set(WORD.findall(text))))
    fail_n, ok_n = max(len(failures), 1), max(len(passes), 1)
    scored = [(fail[w] / fail_n - ok[w] / ok_n, w) for w in fail]
    scored = [s for s in scored if s[0] > 0]
    return [w for _, w in sorted(scored, key=lambda s: (-s[0], s[1]))[:limit]]


def pipelines(sigs: dict[str, OpSignature], max_len: int = 3) -> list[list[list[str]]]:
    """Type-checked operator chains starting from the problem text, grouped by length (1..max_len)."""
    by_len: list[list[list[str]]] = []
    frontier: list[tuple[list[str], str]] = [([], "str")]
    for _ in range(max_len):
        nxt = [
            (chain + [name], sig.returns)
            for chain, type_ in frontier
            for name, sig in sigs.items()
            if sig.unary_from(type_) and not (chain and chain[-1] == name)
        ]
        by_len.append([c for c, _ in nxt])
        frontier = nxt
    return by_len


def stems(text: str) -> set[str]:
    """Lower-case word stems (first 5 letters of words of 4+ letters): 'solves' ~ 'solve'."""
    return {w[:5] for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 4}


@functools.cache
def operator_docs(names: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """Per operator of ``names``: stems of its name and registry description that carry a signal.

    Stems found in more than a quarter of these descriptions ('returns', 'number') name no kind of
    problem and are dropped. Cached: proposers ask for every expansion.
    """
    from operators.registry import get_operators

    ops = get_operators(list(names))
    docs = {n: stems(n.replace("_", " ") + " " + ops[n].description) for n in names}
    counts = Counter(stem for d in docs.values() for stem in d)
    common = {stem for stem, c in counts.items() if c > max(1, len(docs) // 4)}
    return {n: frozenset(d - common) for n, d in docs.items()}


def description_relevance(text: str, sigs: dict[str, OpSignature]) -> dict[str, int]:
    """Per operator: stems shared by ``text`` and the operator's name + registry description
    (:func:`operator_docs`)."""
    docs = operator_docs(tuple(sigs))
    words = stems(text)
    return {n: len(words & docs[n]) for n in sigs}


def chain_score(
    chain: list[str], sigs: dict[str, OpSignature], relevance: dict[str, int], prior: RoutingPrior = DEFAULT_PRIOR,
) -> float:
    """Score of a unary pipeline: relevance of its operators + feeds links + length/answer-type terms."""
    from operators.registry import get_operators

    ops = get_operators(chain)
    score = sum(relevance.get(n, 0) for n in chain) + prior.length_bonus.get(len(chain), prior.other_length_bonus)
    score += prior.feeds_bonus * sum(f"ops.{b}" in ops[a].description for a, b in zip(chain, chain[1:], strict=False))
    return score + (0.0 if sigs[chain[-1]].returns == "str" else -1.0)


def indexed_sources(sigs: dict[str, OpSignature]) -> list[tuple[str, bool]]:
    """Extractors that yield several values of one text: ``(op, by_subscript)``.

    ``by_subscript`` ops return a list (``ops.X(problem)[i]``); the others take an ``int`` index as
    their second parameter (``ops.X(problem, i)``).
    """
    out = []
    for name, sig in sigs.items():
        if not sig.unary_from("str"):
            continue
        if sig.returns == "list":
            out.append((name, True))
        elif len(sig.params) >= 2 and sig.params[1][1] == "int":
            out.append((name, False))
    return out


def multi_arg_call(
    call: Call, problem: Callable[[], ast.expr], sigs: dict[str, OpSignature], op: str, rng: random.Random,
    relevance: dict[str, int] | None = None, prior: RoutingPrior = DEFAULT_PRIOR,
) -> ast.expr | None:
    """``await ops.<op>(...)`` with every required argument extracted from the problem text.

    Arguments of one type share one extractor with distinct indices (``units[0], units[1]``;
    ``extract_quoted(problem, 1), extract_quoted(problem, 0)``), the pattern of multi-input
    operators; a lone argument takes a unary extractor returning its type. Extractors are drawn
    with weights ``exp(relevance / prior.temperature)`` (uniform without ``relevance``).
    """
    rel = relevance or {}
    sig = sigs[op]
    required = [(n, t) for n, t, has_default in sig.params if not has_default]
    by_type: dict[str, list[int]] = {}
    for i, (_, t) in enumerate(required):
        by_type.setdefault(t, []).append(i)
    args: list[ast.expr | None] = [None] * len(required)
    sources = indexed_sources(sigs)

    def pick(names: list[str]) -> int:
        """Index of one extractor, drawn by relevance."""
        return rng.choices(range(len(names)), weights=[math.exp(rel.get(n, 0) / prior.temperature) for n in names])[0]

    for type_, positions in sorted(by_type.items()):
        if len(positions) == 1:
            options = [n for n, s in sigs.items() if s.unary_from("str") and s.returns == type_ and n != op]
            options += [n for n, by_sub in sources if by_sub] if type_ in ("str", ANY) else []
            if not options:
                return None
            src = options[pick(options)]
            expr: ast.expr = call(src, [problem()])
            if sigs[src].returns == "list" and type_ != "list":
                expr = ast.Subscript(value=expr, slice=ast.Constant(rng.choice((0, -1))), ctx=ast.Load())
            args[positions[0]] = expr
            continue
        if not sources:
            return None
        src, by_subscript = sources[pick([n for n, _ in sources])]
        indices = list(range(len(positions)))
        rng.shuffle(indices)
        for pos, index in zip(positions, indices, strict=True):
            if by_subscript:
                args[pos] = ast.Subscript(value=call(src, [problem()]), slice=ast.Constant(index), ctx=ast.Load())
            else:
                args[pos] = call(src, [problem(), ast.Constant(index)])
    return call(op, args)  # type: ignore[arg-type]


async def run_pipeline(expr: ast.expr, problem_name: str, text: str, env: dict[str, Any] | None = None) -> Any:
    """Evaluate a pipeline expression on ``text`` with the host's *tool* operators.

    Understood: operator calls, the problem name, variables bound in ``env`` (they shadow the
    problem name, as an assignment would), constants, subscripts and list displays; an LLM
    operator or anything else raises ``LookupError``.
    """
    from operators.base import OpContext
    from operators.registry import get_operators

    async def run(e: ast.expr) -> Any:
        return await run_pipeline(e, problem_name, text, env)

    if isinstance(expr, ast.Await):
        return await run(expr.value)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
        op = get_operators([expr.func.attr])[expr.func.attr]
        if op.kind != "tool":
            raise LookupError(f"{op.name} is not a tool operator")
        return await op.fn(OpContext(), *[await run(a) for a in expr.args])
    if isinstance(expr, ast.Name) and env is not None and expr.id in env:
        return env[expr.id]
    if isinstance(expr, ast.Name) and expr.id == problem_name:
        return text
    if isinstance(expr, ast.Constant):
        return expr.value
    if isinstance(expr, ast.Subscript):
        return (await run(expr.value))[await run(expr.slice)]
    if isinstance(expr, ast.List):
        return [await run(e) for e in expr.elts]
    raise LookupError(f"cannot run {ast.unparse(expr)}")


async def solves(
    expr: ast.expr, problem_name: str, failure: FailedExample, same_answer: AnswerCheck = exact_answer,
) -> bool:
    """True when the pipeline produces the failing example's expected answer (tool operators only),
    as the benchmark's ``same_answer`` judges it."""
    try:
        return same_answer(await run_pipeline(expr, problem_name, failure.problem), failure.expected)
    except Exception:  # noqa: BLE001 - any operator failure just means "does not solve it"
        return False


def _pipeline_options(
    sigs: dict[str, OpSignature], relevance: dict[str, int], prior: RoutingPrior,
) -> tuple[list[tuple[str, list[str] | str]], list[float]]:
    """Every candidate pipeline (unary chains and multi-input operators) with its softmax weight."""
    chains = [chain for by_len in pipelines(sigs) for chain in by_len]
    multi = [n for n, s in sigs.items() if s.required >= 2]
    options: list[tuple[str, list[str] | str]] = [("chain", c) for c in chains]
    scores = [chain_score(c, sigs, relevance, prior) for c in chains]
    best_source = max((relevance.get(n, 0) for n, _ in indexed_sources(sigs)), default=0)
    for op in multi:
        options.append(("multi", op))
        scores.append(relevance.get(op, 0) + best_source - 1.0)
    top = max(scores, default=0.0)
    return options, [math.exp((s - top) / prior.temperature) for s in scores]


async def draw_pipeline(
    call: Call, problem: Callable[[], ast.Name], sigs: dict[str, OpSignature], target: FailedExample,
    rng: random.Random, checks: int = 0, same_answer: AnswerCheck = exact_answer,
    prior: RoutingPrior = DEFAULT_PRIOR,
) -> tuple[ast.expr, str, bool] | None:
    """A pipeline for the kind of problem ``target`` is: ``(expression, shape, checked)`` or None.

    Pipelines are drawn from one softmax over every unary chain and each multi-input operator
    (scored by its own relevance plus its best extractor's). With ``checks > 0`` up to that many are
    drawn and run on ``target`` (tool operators only, on the host); the first that yields its expected
    answer (``same_answer``, the benchmark's check) is returned with ``checked=True``; else the first
    drawn, unchecked.
    """
    relevance = description_relevance(target.problem, sigs)
    options, weights = _pipeline_options(sigs, relevance, prior)
    if not options:
        return None
    chosen: tuple[ast.expr, str, bool] | None = None
    for _ in range(max(checks, 1)):
        kind, choice = options[rng.choices(range(len(options)), weights=weights)[0]]
        if kind == "multi":
            expr = multi_arg_call(call, problem, sigs, choice, rng, relevance, prior)  # type: ignore[arg-type]
            if expr is None:
                continue
            shape = f"{choice}(...)"
        else:
            expr = problem()
            for name in choice:
                expr = call(name, [expr])
            shape = " -> ".join(choice)
        if chosen is None:
            chosen = (expr, shape, False)
        if checks and await solves(expr, problem().id, target, same_answer):
            return expr, shape, True
    return chosen


async def route_branch(
    call: Call, problem: Callable[[], ast.Name], sigs: dict[str, OpSignature], failures: list[FailedExample],
    passes: list[str], rng: random.Random, checks: int = 0, same_answer: AnswerCheck = exact_answer,
    prior: RoutingPrior = DEFAULT_PRIOR,
) -> tuple[ast.If, str] | None:
    """A routing branch for the kind of one failing problem, and its description (None if none fits).

    The cue is a word of the chosen failing problem ranked by :func:`cue_words`; the pipeline comes
    from :func:`draw_pipeline` (checked on that problem when ``checks > 0``). This is the model-free
    counterpart of an LLM optimizer reading the failed examples. ``prior`` ranks the pipelines.
    """
    if not failures:
        return None
    target = rng.choice(failures)
    ranked = cue_words([f.problem for f in failures], passes, limit=50)
    cues = [w for w in ranked if w in set(WORD.findall(target.problem))]
    if not cues:
        return None
    cue = rng.choice(cues[:3])
    drawn = await draw_pipeline(call, problem, sigs, target, rng, checks, same_answer, prior)
    if drawn is None:
        return None
    expr, shape, checked = drawn
    shape += " (checked on a failing example)" if checked else ""
    test = ast.Compare(left=ast.Constant(cue), ops=[ast.In()], comparators=[problem()])
    return ast.If(test=test, body=[ast.Return(value=expr)], orelse=[]), f"route problems containing {cue!r} to {shape}"


async def guard_branch(
    call: Call, problem: Callable[[], ast.Name], sigs: dict[str, OpSignature], failures: list[FailedExample],
    rng: random.Random, checks: int, same_answer: AnswerCheck = exact_answer, prior: RoutingPrior = DEFAULT_PRIOR,
) -> tuple[ast.Try, str] | None:
    """A guarded attempt: ``try: return <pipeline>`` / ``except Exception: pass``, and its description.

    Where a routing branch picks problems by a word of their text, a guard picks them by whether a
    tool pipeline applies at all: the extractors raise on text that has no equation, no quoted word
    or no units, and the workflow falls through to what comes next. That does not depend on how a
    problem is phrased, so it carries over to phrasings that validation never showed (calc's test
    split is all such phrasings). Only a pipeline that was run on a failing example and gave its
    expected answer is used (``checks`` draws; None when none did), so the body holds tool operators
    only and the ``except`` can only swallow those tools' own failures.
    """
    if not failures or checks <= 0:
        return None
    target = rng.choice(failures)
    drawn = await draw_pipeline(call, problem, sigs, target, rng, checks, same_answer, prior)
    if drawn is None or not drawn[2]:
        return None
    expr, shape, _ = drawn
    handler = ast.ExceptHandler(type=ast.Name(id="Exception", ctx=ast.Load()), name=None, body=[ast.Pass()])
    guard = ast.Try(body=[ast.Return(value=expr)], handlers=[handler], orelse=[], finalbody=[])
    return guard, f"try {shape} (checked on a failing example) before the rest"
