"""The ``mutation`` proposer: structural edits of a workflow's AST that need no model at all.

Edits (each picked by a seeded RNG, so ``propose(ctx, n, seed)`` is deterministic):

- ``insert``: wrap an operator call (or the problem) in another operator whose first parameter
  and return type match, e.g. ``f(x)`` -> ``g(f(x))``;
- ``delete``: bypass a type-preserving operator call, ``g(f(x))`` -> ``f(x)``;
- ``replace``: swap an operator for another one with a compatible signature;
- ``change_arg``: change an instruction string, or the cue of a routing branch;
- ``ensemble``: call an operator three times and majority-vote the answers;
- ``route``: add ``if "<cue>" in problem: return <pipeline>`` at the top of ``solve``, with the cue
  taken from the text of failing problems (``ProposalContext.failures``) and not of solved ones,
  and the pipeline a type-checked composition of operators (:mod:`search.proposers.routing`), optionally
  checked on that failing example with the host's tool operators (and the benchmark's answer check). Routing is what lets a workflow
  treat problem families differently (calc needs it for a perfect score);
- ``guard``: add ``try: return <pipeline>`` / ``except Exception: pass`` after the routing branches and
  earlier guards and before the rest of ``solve``, with a tool pipeline that solved a failing example
  (:func:`search.proposers.routing.guard_branch`): the problem is routed by whether the tools apply to
  it, not by its words, so the edit carries over to unseen phrasings.

Candidates that fail the runtime's validator are discarded and redrawn. Measured on calc (100 proposals
from one 0.35-scoring node of a search): with the pipeline check 28 of 57 routing edits improved the
validation score; without it (``route_checks=0``) 3 of 57 did.
"""

from __future__ import annotations

import ast
import copy
import random

from operators.op_calls import awaited_op_calls
from operators.validate import validation_error
from search.base import Candidate, ProposalContext
from search.proposers.routing import (
    DEFAULT_PRIOR,
    AnswerCheck,
    RoutingPrior,
    cue_words,
    exact_answer,
    guard_branch,
    route_branch,
)
from search.proposers.signatures import ANY, OpSignature, load_signatures, types_match

MUTATION_WEIGHTS: dict[str, float] = {
    "insert": 0.5,
    "delete": 0.5,
    "replace": 1.0,
    "change_arg": 1.0,
    "ensemble": 0.25,
    "route": 4.0,
    "guard": 2.0,
}
"""Relative probability of each edit kind (inapplicable kinds are skipped).

Tuned on calc (commit b873504): ``route`` is 4.0 because calc needs one routing branch per problem
family for a perfect score, and routing edits were the ones that raised its validation score. A
benchmark without families may want less: ``MutationProposer(weights=...)``. ``guard`` (2.0) was added
for calc-llm, whose test phrasings never occur in validation, so keyword routes found on validation
rarely fire on test (docs/search.md has the measurement)."""

INSTRUCTIONS = (
    "Solve the problem step by step and give only the final answer.",
    "Think carefully, then answer with the final value only.",
    "Extract the key quantities, compute the result, and reply with just the answer.",
    "Check the answer once more before replying; reply with the answer only.",
)
"""Instruction strings the ``change_arg`` edit draws from (for LLM operators' prompt arguments)."""



class _Program:
    """A parsed workflow with its ``solve`` function and operator call sites."""

    def __init__(self, code: str):
        self.module = ast.parse(code)
        self.solve = next(
            n for n in self.module.body if isinstance(n, ast.AsyncFunctionDef) and n.name == "solve"
        )
        names = [a.arg for a in self.solve.args.args]
        self.problem_name = names[0] if names else "problem"
        self.ops_name = names[1] if len(names) > 1 else "ops"

    def op_sites(self) -> list[tuple[ast.Await, str]]:
        """``await ops.X(...)`` nodes in a deterministic (breadth-first) order, with X."""
        return awaited_op_calls(self.solve, self.ops_name)

    def problem_args(self) -> list[ast.Name]:
        """Loads of the problem variable that are operator arguments."""
        out = []
        for site, _ in self.op_sites():
            for arg in site.value.args:  # type: ignore[attr-defined]
                if isinstance(arg, ast.Name) and arg.id == self.problem_name:
                    out.append(arg)
        return out

    def call(self, op: str, args: list[ast.expr]) -> ast.Await:
        """Build ``await ops.<op>(*args)``."""
        func = ast.Attribute(value=ast.Name(id=self.ops_name, ctx=ast.Load()), attr=op, ctx=ast.Load())
        return ast.Await(value=ast.Call(func=func, args=args, keywords=[]))

    def code(self) -> str:
        """Source of the (edited) program."""
        return ast.unparse(ast.fix_missing_locations(self.module)) + "\n"


def _replace(root: ast.AST, target: ast.AST, new: ast.AST) -> bool:
    """Swap the node ``target`` (by identity) for ``new`` anywhere below ``root``."""
    for node in ast.walk(root):
        for name, value in ast.iter_fields(node):
            if value is target:
                setattr(node, name, new)
                return True
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if item is target:
                        value[i] = new
                        return True
    return False


class MutationProposer:
    """Proposer that edits the parent's AST (see the module docstring); needs no model."""

    name = "mutation"

    def __init__(self, weights: dict[str, float] | None = None, max_attempts_per_candidate: int = 25,
                 route_checks: int = 30, same_answer: AnswerCheck = exact_answer,
                 prior: RoutingPrior = DEFAULT_PRIOR):
        """``weights`` overrides :data:`MUTATION_WEIGHTS`; invalid edits are retried up to the limit.

        ``route_checks``: pipelines a routing edit may try on its failing example (0 = no checks).
        ``same_answer``: the benchmark's answer check those tries use (``workflow_rl.tasks.base.
        answer_check(bench)``; the default is exact text after strip). ``prior``: how routing ranks
        pipelines (:class:`search.proposers.routing.RoutingPrior`, calc-tuned defaults).
        """
        self.route_checks = route_checks
        self.same_answer = same_answer
        self.prior = prior
        self.weights = dict(MUTATION_WEIGHTS if weights is None else weights)
        self.max_attempts = max_attempts_per_candidate

    async def propose(self, context: ProposalContext, n: int, seed: int) -> list[Candidate]:
        """Up to ``n`` distinct valid children of ``context.parent_code`` (deterministic per seed)."""
        rng = random.Random(seed)
        sigs = load_signatures(context.operator_names)
        seen = {context.parent_code.strip()}
        out: list[Candidate] = []
        for _ in range(n * self.max_attempts):
            if len(out) >= n:
                break
            result = await self.mutate_once(context, sigs, rng)
            if result is None:
                continue
            code, kind, description = result
            if code.strip() in seen or validation_error(code, context.operator_names) is not None:
                continue
            seen.add(code.strip())
            out.append(Candidate(code=code, source="mutation", description=description,
                                 meta={"mutation": kind}))
        return out

    async def mutate_once(
        self, context: ProposalContext, sigs: dict[str, OpSignature], rng: random.Random
    ) -> tuple[str, str, str] | None:
        """One random edit of the parent: ``(code, kind, description)`` or None if it did not apply."""
        kinds = sorted(self.weights)
        kind = rng.choices(kinds, weights=[self.weights[k] for k in kinds])[0]
        try:
            program = _Program(context.parent_code)
        except (SyntaxError, StopIteration):
            return None
        description = getattr(self, f"_{kind}")(program, context, sigs, rng)
        if kind in ("route", "guard"):
            description = await description
        if description is None:
            return None
        return program.code(), kind, description

    # ------------------------------------------------------------------ edits

    def _insert(self, p: _Program, ctx: ProposalContext, sigs: dict[str, OpSignature], rng: random.Random):
        targets: list[tuple[ast.expr, str]] = [(s, sigs[op].returns) for s, op in p.op_sites() if op in sigs]
        targets += [(name, "str") for name in p.problem_args()]
        if not targets:
            return None
        target, type_ = rng.choice(targets)
        options = [n for n, s in sigs.items() if s.unary_from(type_) and types_match(s.returns, type_)]
        if not options:
            return None
        op = rng.choice(options)
        _replace(p.solve, target, p.call(op, [target]))
        return f"insert ops.{op} around {ast.unparse(target)[:60]}"

    def _delete(self, p: _Program, ctx: ProposalContext, sigs: dict[str, OpSignature], rng: random.Random):
        sites = [
            (s, op) for s, op in p.op_sites()
            if op in sigs and s.value.args and sigs[op].params  # type: ignore[attr-defined]
            and types_match(sigs[op].params[0][1], sigs[op].returns)
        ]
        if not sites:
            return None
        site, op = rng.choice(sites)
        _replace(p.solve, site, site.value.args[0])  # type: ignore[attr-defined]
        return f"delete ops.{op} (bypass to its first argument)"

    def _replace(self, p: _Program, ctx: ProposalContext, sigs: dict[str, OpSignature], rng: random.Random):
        sites = [(s, op) for s, op in p.op_sites() if op in sigs]
        rng.shuffle(sites)
        for site, op in sites:
            call = site.value  # type: ignore[attr-defined]
            n_pos = len(call.args)
            kw = {k.arg for k in call.keywords}
            old = sigs[op]
            options = []
            for name, sig in sigs.items():
                if name == op or not types_match(sig.returns, old.returns) or n_pos > len(sig.params):
                    continue
                pos_ok = all(
                    types_match(sig.params[i][1], old.params[i][1] if i < len(old.params) else ANY)
                    for i in range(n_pos)
                )
                missing = [pn for pn, _, d in sig.params[n_pos:] if not d and pn not in kw]
                if pos_ok and not missing and kw <= {pn for pn, _, _ in sig.params[n_pos:]}:
                    options.append(name)
            if options:
                new = rng.choice(options)
                call.func.attr = new
                return f"replace ops.{op} with ops.{new}"
        return None

    def _change_arg(self, p: _Program, ctx: ProposalContext, sigs: dict[str, OpSignature], rng: random.Random):
        cues = cue_words([f.problem for f in ctx.failures], list(getattr(ctx, "passes", ())))
        slots: list[tuple[ast.Constant, tuple[str, ...]]] = []
        for node in ast.walk(p.solve):
            if (
                isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant)
                and isinstance(node.left.value, str) and cues
            ):
                slots.append((node.left, tuple(cues)))
        for site, _ in p.op_sites():
            for arg in site.value.args[1:] + [k.value for k in site.value.keywords]:  # type: ignore[attr-defined]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    slots.append((arg, INSTRUCTIONS))
        if not slots:
            return None
        const, pool = rng.choice(slots)
        choices = [c for c in pool if c != const.value]
        if not choices:
            return None
        old, const.value = const.value, rng.choice(choices)
        return f"change string {old[:40]!r} -> {const.value[:40]!r}"

    def _ensemble(self, p: _Program, ctx: ProposalContext, sigs: dict[str, OpSignature], rng: random.Random):
        votes = [
            n for n, s in sigs.items()
            if s.params and s.required <= 1 and s.params[0][1].startswith("list") and "vote" in n
        ]
        sites = [(s, op) for s, op in p.op_sites() if op in sigs and op not in votes]
        if not votes or not sites:
            return None
        site, op = rng.choice(sites)
        voted = p.call(rng.choice(votes), [ast.List(elts=[copy.deepcopy(site) for _ in range(3)], ctx=ast.Load())])
        _replace(p.solve, site, voted)
        return f"ensemble: majority vote over 3 calls of ops.{op}"

    async def _route(self, p: _Program, ctx: ProposalContext, sigs: dict[str, OpSignature], rng: random.Random):
        def problem() -> ast.Name:
            """A fresh load of the problem variable (AST nodes must not be shared)."""
            return ast.Name(id=p.problem_name, ctx=ast.Load())

        made = await route_branch(p.call, problem, sigs, list(ctx.failures), list(ctx.passes), rng,
                                  checks=self.route_checks, same_answer=self.same_answer, prior=self.prior)
        if made is None:
            return None
        branch, description = made
        body = p.solve.body
        body.insert(1 if body and _is_docstring(body[0], 0) else 0, branch)  # new routes take precedence over older ones
        return description

    async def _guard(self, p: _Program, ctx: ProposalContext, sigs: dict[str, OpSignature], rng: random.Random):
        def problem() -> ast.Name:
            """A fresh load of the problem variable (AST nodes must not be shared)."""
            return ast.Name(id=p.problem_name, ctx=ast.Load())

        made = await guard_branch(p.call, problem, sigs, list(ctx.failures), rng, checks=self.route_checks,
                                  same_answer=self.same_answer, prior=self.prior)
        if made is None:
            return None
        guard, description = made
        body = p.solve.body
        # After the docstring, the keyword routes and earlier guards (they stay first), before the rest.
        at = 0
        while at < len(body) and (_is_docstring(body[at], at) or _is_route(body[at]) or isinstance(body[at], ast.Try)):
            at += 1
        if at == len(body):
            return None  # nothing after it to fall through to
        body.insert(at, guard)
        return description


def _is_docstring(stmt: ast.stmt, index: int) -> bool:
    """The function's docstring (a string constant as its first statement)."""
    return index == 0 and isinstance(stmt, ast.Expr) and isinstance(getattr(stmt, "value", None), ast.Constant)


def _is_route(stmt: ast.stmt) -> bool:
    """A routing branch: ``if <...> in <...>: return ...`` without an else."""
    return (isinstance(stmt, ast.If) and not stmt.orelse and isinstance(stmt.test, ast.Compare)
            and len(stmt.body) == 1 and isinstance(stmt.body[0], ast.Return))
