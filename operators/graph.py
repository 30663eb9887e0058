"""Graph view of a workflow program and its canonical structural hash.

:func:`workflow_graph` turns the ``solve`` function into a ``networkx.DiGraph``:

* one ``input`` node (the ``problem`` argument) and one ``output`` node (every ``return``);
* one node per ``ops.<name>(...)`` call site (a call inside a loop is still one node);
* one node per branch/loop header (``if``/``while``/``for``), per ``else`` arm and per ``except``
  handler, because routing is structure: two workflows that call the same operators under
  different conditions (or in swapped arms, or for other exceptions) behave differently;
* one node per assignment or ``return`` that transforms values with plain Python
  (``x = answer.strip()``), labelled with the expression's shape, so that two workflows that
  differ only in such code do not hash equal (the search de-duplicates by this hash); plain
  aliases (``x = y``) and bare operator calls add no node;
* an edge ``a -> b`` when a value produced at ``a`` can reach ``b`` through variables (data
  dependency), or when ``b`` runs under the control of branch ``a`` (control dependency). The
  analysis is conservative: both arms of an ``if`` are merged, loops are iterated to a fixed point.

Node labels (attribute ``label``) carry the operator name plus the *shape* of every argument: the
argument's AST with variable names erased. String literals are part of the shape on purpose:
prompts are literals inside the code (as in AFlow), and a changed instruction changes behaviour,
so it must change the hash. Renaming variables, reformatting, comments and moving a literal into a
module-level constant do not change it.

:func:`graph_hash` is a Weisfeiler-Lehman hash of that labelled graph (over both edge directions).
"""

from __future__ import annotations

import ast
import builtins
import copy
import hashlib
import warnings

import networkx as nx

from operators.base import ENTRY_POINT
from operators.op_calls import op_call_name

INPUT = "input"
"""Node id (and label) of the problem input."""
OUTPUT = "output"
"""Node id (and label) of the workflow output."""
_MAX_LOOP_PASSES = 12
_BUILTIN_NAMES = frozenset(builtins.__dict__)
_MUTATORS = frozenset("append extend insert update add setdefault".split())


def workflow_graph(code: str) -> nx.DiGraph:
    """Parse ``code`` and return its operator-call graph; ``ValueError`` if it has no ``solve``."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, RecursionError, MemoryError) as exc:
        raise ValueError(f"cannot parse workflow: {exc}") from None
    constants: dict[str, object] = {}
    entry = None
    for stmt in tree.body:
        if (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)
            and isinstance(stmt.value, ast.Constant)
        ):
            constants[stmt.targets[0].id] = stmt.value.value
        elif isinstance(stmt, (ast.AsyncFunctionDef, ast.FunctionDef)) and stmt.name == ENTRY_POINT:
            entry = stmt
    if entry is None:
        raise ValueError(f"workflow has no `{ENTRY_POINT}` function")
    builder = _Builder(constants)
    params = [a.arg for a in entry.args.args]
    if params:
        builder.defs[params[0]] = frozenset({INPUT})
    builder.block(entry.body)
    return builder.graph


def graph_hash(code: str, iterations: int = 4) -> str:
    """Canonical structural hash of ``code`` (see module docstring for what it is invariant to)."""
    graph = workflow_graph(code)
    with warnings.catch_warnings():
        # networkx >= 3.5 warns that directed hashes changed; we hash both directions either way.
        warnings.simplefilter("ignore", UserWarning)
        forward = nx.weisfeiler_lehman_graph_hash(graph, node_attr="label", iterations=iterations)
        backward = nx.weisfeiler_lehman_graph_hash(graph.reverse(copy=False), node_attr="label", iterations=iterations)
    return hashlib.sha256(f"{forward}:{backward}".encode()).hexdigest()


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]


class _Erase(ast.NodeTransformer):
    """Replace variable names by ``_`` and module constants by their literal value."""

    def __init__(self, constants: dict[str, object]):
        self.constants = constants

    def visit_Name(self, node: ast.Name) -> ast.AST:  # noqa: N802 (ast visitor API)
        if node.id in self.constants:
            return ast.Constant(self.constants[node.id])
        if node.id in _BUILTIN_NAMES:
            return node
        return ast.Name(id="_", ctx=ast.Load())


class _Builder:
    """Abstract interpretation of ``solve``'s body: tracks which nodes each variable depends on."""

    def __init__(self, constants: dict[str, object]):
        self.graph = nx.DiGraph()
        self.graph.add_node(INPUT, label=INPUT)
        self.graph.add_node(OUTPUT, label=OUTPUT)
        self.constants = constants
        self.defs: dict[str, frozenset[str]] = {}
        self.control: frozenset[str] = frozenset()
        self.node_of: dict[int, str] = {}  # id(ast node) -> graph node, so loop passes reuse nodes

    # ------------------------------------------------------------------ helpers

    def shape(self, node: ast.AST) -> str:
        """Short hash of an expression with variable names erased."""
        erased = _Erase(self.constants).visit(copy.deepcopy(node))
        return _short_hash(ast.dump(erased, annotate_fields=False))

    def node(self, key: ast.AST, label: str, deps: frozenset[str]) -> str:
        """Get or create the graph node of an AST site and add edges from ``deps``."""
        name = self.node_of.get(id(key))
        if name is None:
            name = f"n{len(self.node_of)}"
            self.node_of[id(key)] = name
            self.graph.add_node(name, label=label, line=getattr(key, "lineno", 0))
        for dep in deps:
            self.graph.add_edge(dep, name)
        return name

    @staticmethod
    def merge(*states: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
        out: dict[str, frozenset[str]] = {}
        for state in states:
            for key, value in state.items():
                out[key] = out.get(key, frozenset()) | value
        return out

    def bind(self, target: ast.AST, deps: frozenset[str], replace: bool = True) -> None:
        """Assign ``deps`` to the names in an assignment target."""
        if isinstance(target, ast.Name):
            self.defs[target.id] = deps if replace else self.defs.get(target.id, frozenset()) | deps
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self.bind(elt, deps, replace)
        elif isinstance(target, ast.Starred):
            self.bind(target.value, deps, replace)
        elif isinstance(target, (ast.Subscript, ast.Attribute)):
            extra = self.expr(target.slice) if isinstance(target, ast.Subscript) else frozenset()
            self.bind(target.value, deps | extra, replace=False)

    # ------------------------------------------------------------------ expressions

    def expr(self, node: ast.AST | None) -> frozenset[str]:
        """Nodes the value of ``node`` depends on (creating operator nodes on the way)."""
        if node is None:
            return frozenset()
        if isinstance(node, ast.Name):
            return self.defs.get(node.id, frozenset())
        if isinstance(node, ast.Call) and op_call_name(node) is not None:
            deps = self.control
            parts = []
            for arg in node.args:
                deps |= self.expr(arg)
                parts.append(self.shape(arg))
            for kw in sorted(node.keywords, key=lambda k: k.arg or ""):
                deps |= self.expr(kw.value)
                parts.append(f"{kw.arg}={self.shape(kw.value)}")
            label = f"{op_call_name(node)}({','.join(parts)})"
            return frozenset({self.node(node, label, deps)})
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.attr in _MUTATORS
        ):
            # xs.append(v): the container now depends on v (and on where the call ran).
            deps = self.control
            for child in [*node.args, *(kw.value for kw in node.keywords)]:
                deps |= self.expr(child)
            site = self.node(node, f".{node.func.attr}[{self.shape(node)}]", deps)
            self.bind(node.func.value, frozenset({site}), replace=False)
            return self.defs.get(node.func.value.id, frozenset())
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            saved = dict(self.defs)
            deps = frozenset()
            for gen in node.generators:
                it = self.expr(gen.iter)
                self.bind(gen.target, it)
                deps |= it
                for cond in gen.ifs:
                    deps |= self.expr(cond)
            saved_control, self.control = self.control, self.control | deps
            if isinstance(node, ast.DictComp):
                deps |= self.expr(node.key) | self.expr(node.value)
            else:
                deps |= self.expr(node.elt)
            self.control = saved_control
            self.defs = saved
            return deps
        deps = frozenset()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                deps |= self.expr(child)
            elif isinstance(child, ast.keyword):
                deps |= self.expr(child.value)
        return deps

    # ------------------------------------------------------------------ statements

    def block(self, stmts: list[ast.stmt]) -> None:
        for stmt in stmts:
            self.stmt(stmt)

    def stmt(self, stmt: ast.stmt) -> None:
        """Update ``defs`` and the graph for one statement."""
        if isinstance(stmt, ast.Assign):
            deps = self.computed(stmt, "=", stmt.value, self.expr(stmt.value) | self.control)
            for target in stmt.targets:
                self.bind(target, deps)
        elif isinstance(stmt, (ast.AugAssign, ast.AnnAssign)):
            deps = self.expr(stmt.value) | self.control | self.expr(stmt.target)
            op = type(stmt.op).__name__ if isinstance(stmt, ast.AugAssign) else ""
            deps = self.computed(stmt, f"{op}=", stmt.value, deps, always=True)
            self.bind(stmt.target, deps, replace=True)
        elif isinstance(stmt, ast.Return):
            deps = self.computed(stmt, "return", stmt.value, self.expr(stmt.value) | self.control)
            for dep in deps:
                self.graph.add_edge(dep, OUTPUT)
        elif isinstance(stmt, ast.If):
            self.branch(stmt, "if", stmt.test, [stmt.body, stmt.orelse])
        elif isinstance(stmt, ast.While):
            self.loop(stmt, "while", lambda: self.expr(stmt.test), stmt.test)
        elif isinstance(stmt, (ast.For, ast.AsyncFor)):
            self.loop(stmt, "for", lambda: self.expr(stmt.iter), stmt.iter)
        elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            before = dict(self.defs)
            self.block(stmt.body)
            after_body = self.merge(before, self.defs)
            ends = []
            self.defs = dict(after_body)
            self.block(stmt.orelse)
            ends.append(self.defs)
            saved_control = self.control
            for handler in stmt.handlers:
                # A handler node (labelled by the caught types) guards its body: catching
                # ValueError or KeyError are different workflows.
                caught = self.shape(handler.type) if handler.type is not None else ""
                guard = self.node(handler, f"except[{caught}]", saved_control)
                self.control = saved_control | {guard}
                self.defs = dict(after_body)
                if handler.name:
                    self.defs[handler.name] = frozenset({guard})
                self.block(handler.body)
                ends.append(self.defs)
            self.control = saved_control
            self.defs = self.merge(*ends)
            self.block(stmt.finalbody)
        else:
            for child in ast.iter_child_nodes(stmt):
                if isinstance(child, ast.expr):
                    self.expr(child)

    def computed(
        self, stmt: ast.stmt, kind: str, value: ast.expr | None, deps: frozenset[str], always: bool = False
    ) -> frozenset[str]:
        """A node for plain Python that transforms values (``x = a.strip()[:3]``), so it hashes.

        A bare name (an alias) or a bare operator call needs no node: its deps pass through.
        """
        inner = value.value if isinstance(value, ast.Await) else value
        if not always and (inner is None or isinstance(inner, ast.Name) or (
            isinstance(inner, ast.Call) and op_call_name(inner) is not None
        )):
            return deps
        return frozenset({self.node(stmt, f"{kind}[{self.shape(value)}]", deps)})

    def branch(self, stmt: ast.stmt, kind: str, test: ast.expr, arms: list[list[ast.stmt]]) -> None:
        """``if``: a header node fed by the condition; defs of both arms are merged.

        The ``then`` arm runs under the header; the ``else`` arm under an ``else`` node hanging off
        the header, so that swapping the arms changes the graph (and the hash).
        """
        header = self.node(stmt, f"{kind}[{self.shape(test)}]", self.expr(test) | self.control)
        saved_control = self.control
        before = dict(self.defs)
        ends = []
        for index, arm in enumerate(arms):
            guard = header
            if index > 0 and arm:
                guard = self.node(arm[0], f"else[{self.shape(test)}]", frozenset({header}))
            self.control = saved_control | {guard}
            self.defs = dict(before)
            self.block(arm)
            ends.append(self.defs)
        self.defs = self.merge(*ends)
        self.control = saved_control

    def loop(self, stmt: ast.stmt, kind: str, header_deps, shaped: ast.expr) -> None:
        """``for``/``while``: iterate the body to a fixed point (it may run 0..n times)."""
        saved_control = self.control
        label = f"{kind}[{self.shape(shaped)}]"
        if isinstance(stmt, (ast.For, ast.AsyncFor)):
            label = f"{kind}[{self.shape(stmt.target)}:{self.shape(shaped)}]"
        for _ in range(_MAX_LOOP_PASSES):
            before_defs, before_edges = dict(self.defs), self.graph.number_of_edges()
            header = self.node(stmt, label, header_deps() | saved_control)
            self.control = saved_control | {header}
            if isinstance(stmt, (ast.For, ast.AsyncFor)):
                self.bind(stmt.target, frozenset({header}))
            self.block(stmt.body)
            self.defs = self.merge(before_defs, self.defs)
            self.control = saved_control
            if self.defs == before_defs and self.graph.number_of_edges() == before_edges:
                break
        self.block(stmt.orelse)
