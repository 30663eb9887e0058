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
  and the pipeline a type-checked composition of operators. Routing is what lets a workflow treat
  problem families differently (calc needs it for a perfect score).

Candidates that fail the runtime's validator are discarded and redrawn.
"""

from __future__ import annotations

import ast
import copy
import random
import re
from collections import Counter

from search.base import Candidate, ProposalContext
from search.signatures import ANY, OpSignature, load_signatures, types_match

MUTATION_WEIGHTS: dict[str, float] = {
    "insert": 1.0,
    "delete": 1.0,
    "replace": 2.0,
    "change_arg": 1.0,
    "ensemble": 0.5,
    "route": 3.0,
}
"""Relative probability of each edit kind (inapplicable kinds are skipped)."""

INSTRUCTIONS = (
    "Solve the problem step by step and give only the final answer.",
    "Think carefully, then answer with the final value only.",
    "Extract the key quantities, compute the result, and reply with just the answer.",
    "Check the answer once more before replying; reply with the answer only.",
)
"""Instruction strings the ``change_arg`` edit draws from (for LLM operators' prompt arguments)."""

_WORD = re.compile(r"[A-Za-z]{3,}")


def validation_error(code: str, operator_names: tuple[str, ...]) -> str | None:
    """The runtime validator's message for ``code``, or None when the program is valid."""
    from operators.validate import WorkflowValidationError, validate_workflow

    try:
        validate_workflow(code, operator_names)
    except WorkflowValidationError as exc:
        return str(exc)
    return None


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
        sites = []
        for node in ast.walk(self.solve):
            if (
                isinstance(node, ast.Await)
                and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute)
                and isinstance(node.value.func.value, ast.Name)
                and node.value.func.value.id == self.ops_name
            ):
                sites.append((node, node.value.func.attr))
        return sites

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


def cue_words(failures: list[str], passes: list[str], limit: int = 8) -> list[str]:
    """Words found in many failing problems and few solved ones, best first (ties alphabetical)."""
    fail = Counter(w for text in failures for w in sorted(set(_WORD.findall(text))))
    ok = Counter(w for text in passes for w in sorted(set(_WORD.findall(text))))
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


class MutationProposer:
    """Proposer that edits the parent's AST (see the module docstring); needs no model."""

    name = "mutation"

    def __init__(self, weights: dict[str, float] | None = None, max_attempts_per_candidate: int = 25):
        """``weights`` overrides :data:`MUTATION_WEIGHTS`; invalid edits are retried up to the limit."""
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
            result = self.mutate_once(context, sigs, rng)
            if result is None:
                continue
            code, kind, description = result
            if code.strip() in seen or validation_error(code, context.operator_names) is not None:
                continue
            seen.add(code.strip())
            out.append(Candidate(code=code, source="mutation", description=description,
                                 meta={"mutation": kind}))
        return out

    def mutate_once(
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

    def _route(self, p: _Program, ctx: ProposalContext, sigs: dict[str, OpSignature], rng: random.Random):
        cues = cue_words([f.problem for f in ctx.failures], list(getattr(ctx, "passes", ())))
        chains_by_len = [c for c in pipelines(sigs) if c]
        multi = [n for n, s in sigs.items() if s.required >= 2]
        if not cues or not (chains_by_len or multi):
            return None
        cue = rng.choice(cues[:5])
        problem = ast.Name(id=p.problem_name, ctx=ast.Load())
        if multi and (not chains_by_len or rng.random() < 0.35):
            op = rng.choice(multi)
            expr = multi_arg_call(p, sigs, op, rng)
            if expr is None:
                return None
            shape = f"{op}(...)"
        else:
            chain = rng.choice(rng.choice(chains_by_len))
            expr = problem
            for op in chain:
                expr = p.call(op, [expr])
            shape = " -> ".join(chain)
        test = ast.Compare(left=ast.Constant(cue), ops=[ast.In()], comparators=[copy.deepcopy(problem)])
        branch = ast.If(test=test, body=[ast.Return(value=expr)], orelse=[])
        body = p.solve.body
        docstring = body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None),
                                                                          ast.Constant)
        body.insert(1 if docstring else 0, branch)
        return f"route problems containing {cue!r} to {shape}"


def _indexed_sources(sigs: dict[str, OpSignature]) -> list[tuple[str, bool]]:
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


def multi_arg_call(p: _Program, sigs: dict[str, OpSignature], op: str, rng: random.Random) -> ast.expr | None:
    """``await ops.<op>(...)`` with every required argument extracted from the problem text.

    Arguments of one type share one extractor with distinct indices (``units[0], units[1]``;
    ``extract_quoted(problem, 1), extract_quoted(problem, 0)``), the pattern of multi-input
    operators; a lone argument takes a unary extractor returning its type.
    """
    sig = sigs[op]
    required = [(n, t) for n, t, has_default in sig.params if not has_default]
    by_type: dict[str, list[int]] = {}
    for i, (_, t) in enumerate(required):
        by_type.setdefault(t, []).append(i)
    args: list[ast.expr | None] = [None] * len(required)
    sources = _indexed_sources(sigs)

    def problem() -> ast.Name:
        return ast.Name(id=p.problem_name, ctx=ast.Load())

    for type_, positions in sorted(by_type.items()):
        if len(positions) == 1:
            options = [n for n, s in sigs.items() if s.unary_from("str") and s.returns == type_ and n != op]
            options += [n for n, by_sub in sources if by_sub] if type_ in ("str", ANY) else []
            if not options:
                return None
            src = rng.choice(options)
            expr: ast.expr = p.call(src, [problem()])
            if sigs[src].returns == "list" and type_ != "list":
                expr = ast.Subscript(value=expr, slice=ast.Constant(rng.choice((0, -1))), ctx=ast.Load())
            args[positions[0]] = expr
            continue
        if not sources:
            return None
        src, by_subscript = rng.choice(sources)
        indices = list(range(len(positions)))
        rng.shuffle(indices)
        for pos, index in zip(positions, indices, strict=True):
            if by_subscript:
                args[pos] = ast.Subscript(value=p.call(src, [problem()]), slice=ast.Constant(index), ctx=ast.Load())
            else:
                args[pos] = p.call(src, [problem(), ast.Constant(index)])
    return p.call(op, args)  # type: ignore[arg-type]
