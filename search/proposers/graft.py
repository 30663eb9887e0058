"""Grafts: a straight-line program written for ONE problem becomes a routing branch of a parent.

A per-query program (what a policy trained on per-problem prompts writes) solves one kind of
problem; a search node is a task-level workflow. :func:`graft` joins them:
``if "<cue>" in problem: <the program's statements>`` is inserted at the top of the parent's
``solve``, with the cue the word of the failing problem that best separates the failures the
program solves from those it does not and from the problems the parent solved
(:func:`best_cue`). The branch ends in a ``return``, so its variables never leak into the
parent's own path.

:func:`solves_example` runs such a program on the failing problem with the host's *tool*
operators (the same check the mutation proposer's routing edit makes), so a branch is only
grafted when it produces that problem's expected answer, as the benchmark's answer check
(:data:`search.proposers.routing.AnswerCheck`, passed in by the caller) judges it.
"""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Mapping
from typing import Any

from search.base import FailedExample
from search.proposers.routing import WORD, AnswerCheck, exact_answer, operator_docs, run_pipeline, stems


def solve_def(code: str) -> tuple[ast.Module, ast.AsyncFunctionDef] | None:
    """``code`` parsed, and its two-argument ``async def`` (None on a syntax error or without one)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    fn = next((n for n in tree.body if isinstance(n, ast.AsyncFunctionDef)), None)
    return (tree, fn) if fn is not None and len(fn.args.args) == 2 else None


def _has_docstring(body: list[ast.stmt]) -> bool:
    return bool(body) and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)


def without_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    """``body`` without a leading docstring (a copy of the list)."""
    return list(body[1:] if _has_docstring(body) else body)


def is_straight(body: list[ast.stmt]) -> bool:
    """Only single-name assignments, then one ``return <expr>``."""
    if not body or not isinstance(body[-1], ast.Return) or body[-1].value is None:
        return False
    return all(isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name)
               for s in body[:-1])


def straight_line(code: str) -> tuple[list[ast.stmt], str] | None:
    """``(statements, problem name)`` of a straight-line ``solve``, or None.

    Straight-line = only ``name = <expr>`` assignments, then one final ``return <expr>``
    (a docstring is skipped). Anything else (branches, loops, several returns) is not grafted.
    """
    parsed = solve_def(code)
    if parsed is None:
        return None
    fn = parsed[1]
    body = without_docstring(fn.body)
    return (body, fn.args.args[0].arg) if is_straight(body) else None


async def run_straight_line(statements: list[ast.stmt], problem_name: str, text: str) -> Any:
    """Run straight-line statements on ``text`` with tool operators only (``LookupError`` otherwise)."""
    env: dict[str, Any] = {}
    for stmt in statements[:-1]:
        env[stmt.targets[0].id] = await run_pipeline(stmt.value, problem_name, text, env)  # type: ignore[attr-defined]
    return await run_pipeline(statements[-1].value, problem_name, text, env)  # type: ignore[attr-defined]


async def solves_example(
    statements: list[ast.stmt], problem_name: str, failure: FailedExample, same_answer: AnswerCheck = exact_answer,
) -> bool:
    """True when the statements produce the failing example's expected answer (tool operators only),
    as the benchmark's ``same_answer`` judges it."""
    try:
        return same_answer(await run_straight_line(statements, problem_name, failure.problem), failure.expected)
    except Exception:  # noqa: BLE001 - an operator error, an LLM operator, a bad index: "does not solve it"
        return False


async def solved_map(
    statements: list[ast.stmt], problem_name: str, failures: list[FailedExample],
    same_answer: AnswerCheck = exact_answer,
) -> dict[int, bool]:
    """Problem id -> whether the statements solve that failing example (see :func:`solves_example`)."""
    return {f.problem_id: await solves_example(statements, problem_name, f, same_answer) for f in failures}


QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|“[^”]*”|‘[^’]*’")
"""Quoted spans: the data a problem works on (the word to reverse), never a routing cue."""


def operator_stems(statements: list[ast.stmt]) -> set[str]:
    """Word stems of the names and descriptions of the operators the statements call.

    Stems shared by more than a quarter of all registered descriptions ('returns', 'number') are
    dropped: they name no kind of problem.
    """
    from operators.registry import get_operators

    docs = operator_docs(tuple(get_operators()))
    called = {n.func.attr for s in statements for n in ast.walk(s)
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    return set().union(*(docs[name] for name in called if name in docs))


async def best_cue(
    statements: list[ast.stmt], problem_name: str, target: FailedExample, failures: list[FailedExample],
    passes: list[str], taken: set[str], solved: Mapping[int, bool] | None = None,
    same_answer: AnswerCheck = exact_answer,
) -> str | None:
    """The word of ``target`` that best routes exactly the problems the statements solve.

    Each word of the target outside quotes is scored on the parent's evidence: +1 per failing
    problem containing it that the statements solve, -1 per failing problem containing it that
    they do not, -1 per solved problem containing it (routing it away from the parent could break
    it). The best positive score wins. Ties, common with few failures, go to the word that names
    what the statements' operators do ('median' for ``ops.median``, 'largest' for ``ops.max_list``:
    such words recur in the problems of that kind, a name or a number word does not), then to the
    earliest; words in ``taken`` are skipped. ``solved`` (problem id -> solves it) saves running
    the statements on ``failures`` again when the caller already knows; without it they are run and
    judged by ``same_answer`` (the benchmark's check).
    """
    if solved is None:
        solved = await solved_map(statements, problem_name, failures, same_answer)
    relevant = operator_stems(statements)
    best: tuple[int, int, str] | None = None
    for word in dict.fromkeys(WORD.findall(QUOTED.sub(" ", target.problem))):
        if word in taken:
            continue
        score = sum(1 if solved[f.problem_id] else -1 for f in failures if word in f.problem)
        score -= sum(word in text for text in passes)
        names = len(stems(word) & relevant)
        if score > 0 and (best is None or (score, names) > best[:2]):
            best = (score, names, word)
    return None if best is None else best[2]


def graft(parent_code: str, branches: list[tuple[str, list[ast.stmt]]]) -> str | None:
    """The parent with ``if cue in problem: <statements>`` branches at the top of ``solve``.

    ``branches`` holds ``(cue, statements)``; earlier branches take precedence. The validator fixes
    the signature to ``solve(problem, ops)``, so the statements' names already match the parent's.
    None if the parent has no two-argument async ``solve``.
    """
    parsed = solve_def(parent_code)
    if parsed is None:
        return None
    tree, fn = parsed
    problem = fn.args.args[0].arg
    at = 1 if _has_docstring(fn.body) else 0
    for cue, statements in reversed(branches):
        test = ast.Compare(left=ast.Constant(cue), ops=[ast.In()], comparators=[ast.Name(id=problem, ctx=ast.Load())])
        fn.body.insert(at, ast.If(test=test, body=[copy.deepcopy(s) for s in statements], orelse=[]))
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"
