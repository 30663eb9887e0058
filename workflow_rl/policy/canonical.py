"""Search workflows as training data: their per-problem branches, in the policy's own style.

The loop trains the policy on per-problem programs found by search
(:func:`workflow_rl.loop.driver.collect_train_data`, ``search_branches``). A search workflow is
task-level: routing branches ``if "<cue>" in problem: ...`` grafted by
:mod:`search.proposers.graft` or written by the mutation proposer, in nested-call style.
:func:`branch_programs` splits it back into per-problem programs and :func:`canonical` rewrites
each in the form the built-in policy's warm start uses (one assignment per operator call, results
named by their type), so the learner imitates search programs without learning a second syntax.

These transforms used to live in ``search/proposers/graft.py``; only the learner's data preparation uses
them, and :data:`HOIST_NAMES` is the tiny corpus's naming (:mod:`workflow_rl.policy.tiny_corpus`),
not something search should know.
"""

from __future__ import annotations

import ast
import copy

from operators.op_calls import awaited_op_name
from search.proposers.graft import is_straight, solve_def, without_docstring


def branch_programs(code: str) -> list[str]:
    """Per-problem programs inside a task-level workflow: the reverse of :func:`search.proposers.graft.graft`.

    Each leading ``if`` whose body (or ``else``) is straight-line, and the straight-line tail of
    ``solve`` after them, becomes ``async def solve(problem, ops): <statements>``: the program the
    workflow runs for the problems that reach that branch. Other shapes give nothing.
    """
    parsed = solve_def(code)
    if parsed is None:
        return []
    fn = parsed[1]
    body = without_docstring(fn.body)
    found: list[list[ast.stmt]] = []
    i = 0
    while i < len(body) and isinstance(body[i], ast.If):
        found += [part for part in (body[i].body, body[i].orelse) if is_straight(part)]
        i += 1
    if is_straight(body[i:]):
        found.append(body[i:])
    out = []
    for statements in found:
        solve = ast.AsyncFunctionDef(name="solve", args=copy.deepcopy(fn.args), body=copy.deepcopy(statements),
                                     decorator_list=[], returns=None, type_params=[])
        out.append(ast.unparse(ast.fix_missing_locations(ast.Module(body=[solve], type_ignores=[]))) + "\n")
    return list(dict.fromkeys(out))


HOIST_NAMES = {"list": "values", "str": "text", "number": "value", "int": "count"}
"""Variable a hoisted operator result gets, by its return type (the tiny corpus's names)."""


def flatten(code: str, returns: dict[str, str]) -> str:
    """Nested operator calls hoisted into one assignment each: the style policies are taught.

    ``return await ops.f(await ops.g(problem))`` becomes ``text = await ops.g(problem)`` then
    ``return await ops.f(text)``: the same program, in the ``name = extract(...)`` / ``return
    op(name)`` form of the built-in policy's warm start, so the learner imitates search programs
    without having to learn a second syntax. ``returns`` maps operator -> return type. A result is
    only hoisted when its variable name is free (not in the program, not holding a sibling argument).
    """
    parsed = solve_def(code)
    if parsed is None:
        return code
    tree, fn = parsed
    ops_name = fn.args.args[1].arg
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}

    def op_name(node: ast.expr) -> str | None:
        return awaited_op_name(node, ops_name)

    def hoist(node: ast.expr, out: list[ast.stmt], live: set[str]) -> ast.expr:
        if op_name(node) is None:
            return node
        call = node.value  # type: ignore[attr-defined]
        taken: set[str] = set()
        args = []
        for arg in call.args:
            name = HOIST_NAMES.get(returns.get(op_name(arg) or "", ""))
            inner = hoist(arg, out, live | taken)
            if name is None or name in live or name in taken or name in used:
                args.append(inner)
                continue
            out.append(ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())], value=inner))
            args.append(ast.Name(id=name, ctx=ast.Load()))
            taken.add(name)
        call.args = args
        return node

    body: list[ast.stmt] = []
    for stmt in fn.body:
        if isinstance(stmt, (ast.Assign, ast.Return)) and stmt.value is not None:
            stmt.value = hoist(stmt.value, body, set())
        body.append(stmt)
    fn.body = body
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def canonical(code: str, returns: dict[str, str]) -> str:
    """:func:`flatten`, then each variable holding an operator result renamed to its type's name.

    ``expression = await ops.extract_expression(problem)`` becomes ``text = ...`` (uses renamed
    too), so search programs share one naming scheme with what the policy writes: a learner shown
    ``expression`` in some programs and ``text`` in others blends them into undefined names. A
    rename is skipped where the type's name is used by the program itself or still holds a value
    that a later statement reads.
    """
    flat = flatten(code, returns)
    parsed = solve_def(flat)
    if parsed is None:
        return flat
    tree, fn = parsed
    ops_name = fn.args.args[1].arg
    body = fn.body
    original = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    last_use: dict[str, int] = {}
    for i, stmt in enumerate(body):
        value = getattr(stmt, "value", None)
        for node in ast.walk(value) if value is not None else ():
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                last_use[node.id] = i
    rename: dict[str, str] = {}
    holder: dict[str, str] = {}  # new name -> original variable whose value it holds
    for i, stmt in enumerate(body):
        value = getattr(stmt, "value", None)
        for node in ast.walk(value) if value is not None else ():
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                node.id = rename.get(node.id, node.id)
        if not (isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name)):
            continue
        old = stmt.targets[0].id
        op = awaited_op_name(stmt.value, ops_name)
        new = HOIST_NAMES.get(returns.get(op or "", ""))
        busy = new in holder and holder[new] != old and last_use.get(holder[new], -1) > i
        if new is None or busy or (new in original and new != old):
            rename.pop(old, None)
            holder = {k: v for k, v in holder.items() if k != old}
            continue
        rename[old] = new
        holder[new] = old
        stmt.targets[0].id = new
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"
