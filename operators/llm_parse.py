"""Robust parsing of model replies for the LLM operators.

Every failure is an :class:`OperatorError` carrying the raw reply, never another exception type.
"""

from __future__ import annotations

import ast
import doctest
import re
import string

from operators.base import OperatorError

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_tag(text: str, tag: str, *, required: bool = True) -> str | None:
    """Content of the last ``<tag>...</tag>`` in ``text``.

    An unclosed last tag (the model ran out of tokens or forgot it) yields everything after it.
    Missing tag: :class:`OperatorError` (or None when not ``required``).
    """
    closed = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL | re.IGNORECASE)
    if closed:
        return closed[-1].strip()
    opened = re.search(rf"<{tag}>(.*)\Z", text, flags=re.DOTALL | re.IGNORECASE)
    if opened and opened.group(1).strip():
        return opened.group(1).strip()
    if required:
        raise OperatorError(f"the model's reply has no <{tag}> tag", raw=text)
    return None


def _defines(tree: ast.Module, name: str) -> bool:
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name
               for node in ast.walk(tree))


def extract_code(text: str, entry_point: str | None = None) -> str:
    """Python source from a reply: the last fenced block defining ``entry_point`` (if given).

    Falls back to the whole reply when it has no fence and parses as Python. The result must parse;
    when ``entry_point`` is given it must define that function.
    """
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]
    candidates = list(reversed(blocks)) if blocks else [text]
    last_problem = "no code block"
    for code in candidates:
        code = code.strip("\n")
        try:
            tree = ast.parse(code)
        except SyntaxError as exc:
            last_problem = f"syntax error on line {exc.lineno}: {exc.msg}"
            continue
        if entry_point is not None and not _defines(tree, entry_point):
            last_problem = f"the code does not define {entry_point}()"
            continue
        if not tree.body:
            last_problem = "the code block is empty"
            continue
        return code
    raise OperatorError(f"no usable Python code in the model's reply ({last_problem})", raw=text)


def extract_doctest_asserts(problem: str, entry_point: str) -> str:
    """``assert`` statements built from the ``>>> call`` / expected-output examples in ``problem``.

    Only examples that call ``entry_point`` and form a valid assertion are kept; returns "" if none.
    """
    try:
        examples = doctest.DocTestParser().get_examples(problem)
    except ValueError:  # inconsistent indentation in a hand-written docstring
        return ""
    lines = []
    for ex in examples:
        source = ex.source.strip()
        # The docstring's closing quotes follow the last example's output at the same indentation.
        want_lines = []
        for line in ex.want.splitlines():
            if line.strip().startswith(('"""', "'''")):
                break
            want_lines.append(line)
        want = "\n".join(want_lines).strip()
        if not want or entry_point not in source or "\n" in source:
            continue
        statement = f"assert ({source}) == ({want}), {source!r}"
        try:
            ast.parse(statement)
        except SyntaxError:
            continue
        lines.append(statement)
    return "\n".join(lines)


def extract_public_tests(problem: str, entry_point: str) -> str:
    """Public tests shown in a problem: doctest examples as asserts plus literal ``assert`` lines calling it."""
    lines = extract_doctest_asserts(problem, entry_point).splitlines()
    for raw in problem.splitlines():
        line = raw.strip()
        if line.startswith("assert ") and re.search(rf"\b{re.escape(entry_point)}\s*\(", line) and line not in lines:
            try:
                ast.parse(line)
            except SyntaxError:
                continue
            lines.append(line)
    return "\n".join(lines)


def infer_entry_point(problem: str) -> str | None:
    """The function a code problem asks for: its last ``def name(``, else the first ``assert name(``."""
    defs = re.findall(r"^\s*def\s+([A-Za-z_]\w*)\s*\(", problem, flags=re.MULTILINE)
    if defs:
        return defs[-1]
    called = re.search(r"\bassert\s+(?:not\s+)?\(?\s*([A-Za-z_]\w*)\s*\(", problem)
    if called and called.group(1) not in ("set", "math", "abs", "round", "sorted", "len", "list"):
        return called.group(1)
    return None


def option_letters(n: int) -> list[str]:
    """``["A", "B", ...]`` for ``n`` candidates (at most 26)."""
    if not 1 <= n <= 26:
        raise OperatorError(f"sc_ensemble takes 1 to 26 solutions, got {n}")
    return list(string.ascii_uppercase[:n])
