"""Workflow validator: a strict AST allow-list run before any workflow program executes.

A workflow is Python source with exactly one ``async def solve(problem, ops)`` (optionally preceded
by a module docstring and ``NAME = <string/number literal>`` constants). Inside ``solve`` only plain
data handling is allowed: assignments, ``if``/``for``/``while``/``try``-``except``, comprehensions,
literals, f-strings, a fixed set of builtins and of str/list/dict methods, and ``await ops.<op>(...)``
for operators of the benchmark. Everything that could reach the interpreter's internals is refused:
imports, any name or attribute containing ``__``, attribute *reads* (only method calls are allowed),
``lambda``/``def``/``class``, ``global``/``nonlocal``, ``yield``, ``finally`` and bare ``except``
(they could swallow the runtime's time-limit exception), ``str.format`` (format-string attribute
access) and constant expressions that would build huge values (``'a' * 10**9``).

The runtime still isolates execution at the OS level; the validator is the first of two layers.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import re
import warnings
from collections.abc import Collection

from operators.base import ENTRY_POINT
from operators.validate_fold import MAX_INT_CONST, NotConstant, TooBig, fold

# A generated program such as ``return 3x`` makes the parser print "SyntaxWarning: invalid decimal
# literal" to stderr, once per program (a policy writes thousands). Those programs are data being
# checked, not the user's code, so the warnings of sources parsed from strings are dropped.
warnings.filterwarnings("ignore", category=SyntaxWarning, module="<unknown>")

MAX_SOURCE_CHARS = 50_000
"""Longest accepted program source."""
MAX_STR_CONST = 20_000
"""Longest string literal (prompts are literals, so this is generous)."""
MAX_DEPTH = 60
"""Deepest AST nesting (deep nesting crashes the compiler)."""

SAFE_BUILTINS = frozenset(
    "len range str int float bool list dict set tuple min max sum sorted enumerate zip abs round "
    "any all isinstance reversed repr divmod pow chr ord hash frozenset".split()
)
"""Builtins a workflow may call; the worker's ``__builtins__`` holds exactly these (plus exceptions)."""

SAFE_EXCEPTIONS = frozenset(
    "Exception ValueError TypeError KeyError IndexError ZeroDivisionError ArithmeticError "
    "LookupError RuntimeError AssertionError OverflowError".split()
)
"""Exception classes a workflow may raise or catch (never ``BaseException``: time limits derive from it)."""

SAFE_METHODS = frozenset(
    # str
    "strip lstrip rstrip split rsplit splitlines join lower upper title capitalize casefold swapcase "
    "replace startswith endswith find rfind index rindex count isdigit isnumeric isdecimal isalpha "
    "isalnum isspace islower isupper zfill center ljust rjust partition rpartition removeprefix "
    "removesuffix expandtabs "
    # list / dict / set
    "append extend insert pop remove sort reverse copy clear get items keys values update setdefault "
    "add discard union intersection difference issubset issuperset".split()
)
"""Method names callable on values (``format``/``format_map`` are excluded on purpose)."""

_FORMAT_SPEC = re.compile(r"^[<>^=]?[+\- ]?#?0?\d{0,3},?(\.\d{1,2})?[bcdeEfFgGnosxX%]?$")

_ALLOWED_EXPR = (
    ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.Call, ast.Constant, ast.JoinedStr,
    ast.FormattedValue, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.ListComp, ast.SetComp, ast.DictComp,
    ast.GeneratorExp, ast.comprehension, ast.Subscript, ast.Slice, ast.Name, ast.Attribute, ast.Await,
    ast.Starred, ast.keyword, ast.Load, ast.Store, ast.Del, ast.expr_context, ast.operator, ast.unaryop,
    ast.cmpop, ast.boolop,
)
_ALLOWED_STMT = (
    ast.Assign, ast.AugAssign, ast.Expr, ast.If, ast.For, ast.While, ast.Break, ast.Continue,
    ast.Return, ast.Pass, ast.Try, ast.ExceptHandler, ast.Raise, ast.Assert, ast.Delete,
)


class WorkflowValidationError(ValueError):
    """A workflow program was rejected; ``errors`` lists ``(lineno, message)`` pairs."""

    def __init__(self, errors: list[tuple[int, str]]):
        self.errors = sorted(set(errors))
        super().__init__("; ".join(f"line {line}: {msg}" for line, msg in self.errors))


def code_hash(code: str) -> str:
    """sha256 of the normalised source (``ast.unparse``), so whitespace and comments do not matter.

    Unparseable source hashes its raw text (it is stored as an invalid workflow all the same).
    """
    try:
        normal = ast.unparse(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        normal = code
    return hashlib.sha256(normal.encode("utf-8", "surrogatepass")).hexdigest()


def validate_workflow(code: str, operator_names: Collection[str]) -> ast.Module:
    """Parse and check ``code``; return the module AST or raise :class:`WorkflowValidationError`."""
    if not isinstance(code, str):
        raise WorkflowValidationError([(0, f"program must be a str, got {type(code).__name__}")])
    if len(code) > MAX_SOURCE_CHARS:
        raise WorkflowValidationError([(0, f"program is {len(code)} chars; the limit is {MAX_SOURCE_CHARS}")])
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        raise WorkflowValidationError([(exc.lineno or 0, f"syntax error: {exc.msg}")]) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise WorkflowValidationError([(0, f"cannot parse program: {type(exc).__name__}")]) from None
    checker = _Checker(frozenset(operator_names))
    checker.check_module(tree)
    if checker.errors:
        raise WorkflowValidationError(checker.errors)
    return tree


class _Checker:
    """Walks the AST once and collects every violation with its line number."""

    def __init__(self, operator_names: frozenset[str]):
        self.ops = operator_names
        self.errors: list[tuple[int, str]] = []
        self.constants: set[str] = set()

    def err(self, node: ast.AST, msg: str) -> None:
        """Record one violation."""
        self.errors.append((getattr(node, "lineno", 0), msg))

    # ------------------------------------------------------------------ module level

    def check_module(self, tree: ast.Module) -> None:
        """Top level: optional docstring, literal constants, then exactly one ``solve``."""
        entries = []
        for i, stmt in enumerate(tree.body):
            if isinstance(stmt, ast.AsyncFunctionDef):
                entries.append(stmt)
            elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and i == 0:
                self.check_constant(stmt.value)
            elif isinstance(stmt, ast.Assign) and self._is_literal_constant(stmt):
                name = stmt.targets[0].id
                self.check_name(stmt.targets[0], name)
                self.constants.add(name)
                self.check_constant(stmt.value)
            elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
                self.err(stmt, "imports are not allowed")
            elif isinstance(stmt, ast.FunctionDef) and stmt.name == ENTRY_POINT:
                self.err(stmt, f"`{ENTRY_POINT}` must be `async def {ENTRY_POINT}(problem, ops)`")
            else:
                self.err(stmt, f"only `async def {ENTRY_POINT}(problem, ops)`, a docstring and "
                         f"`NAME = <literal>` constants may appear at module level, not {type(stmt).__name__}")
        if not entries and not self.errors:
            self.err(tree, f"missing `async def {ENTRY_POINT}(problem, ops)`")
        for fn in entries:
            if fn.name != ENTRY_POINT:
                self.err(fn, f"only one function is allowed and it must be named `{ENTRY_POINT}`, not `{fn.name}`")
                continue
            if fn is not entries[0]:
                self.err(fn, f"`{ENTRY_POINT}` is defined more than once")
                continue
            self.check_signature(fn)
            for stmt in fn.body:
                self.check_stmt(stmt, 1)

    @staticmethod
    def _is_literal_constant(stmt: ast.Assign) -> bool:
        return (
            len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)
            and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, (str, int, float))
        )

    def check_signature(self, fn: ast.AsyncFunctionDef) -> None:
        """Exactly two plain positional parameters, named ``problem`` and ``ops``."""
        a = fn.args
        names = [p.arg for p in a.args]
        extras = a.posonlyargs or a.kwonlyargs or a.vararg or a.kwarg or a.defaults or a.kw_defaults
        if names != ["problem", "ops"] or extras:
            self.err(fn, f"signature must be `async def {ENTRY_POINT}(problem, ops)`")
        if fn.decorator_list:
            self.err(fn, "decorators are not allowed")
        if fn.returns is not None or any(p.annotation is not None for p in a.args):
            self.err(fn, "annotations are not allowed")

    # ------------------------------------------------------------------ statements

    def check_stmt(self, stmt: ast.stmt, depth: int) -> None:
        """One statement inside ``solve`` (recursing into blocks)."""
        if depth > MAX_DEPTH:
            self.err(stmt, f"nesting deeper than {MAX_DEPTH}")
            return
        if not isinstance(stmt, _ALLOWED_STMT):
            what = {
                ast.Import: "imports", ast.ImportFrom: "imports", ast.FunctionDef: "nested functions",
                ast.AsyncFunctionDef: "nested functions", ast.ClassDef: "classes",
                ast.Global: "`global`", ast.Nonlocal: "`nonlocal`", ast.With: "`with`",
                ast.AsyncWith: "`async with`", ast.AsyncFor: "`async for`",
            }.get(type(stmt), type(stmt).__name__)
            self.err(stmt, f"{what} not allowed in a workflow")
            return
        if isinstance(stmt, ast.Try):
            if stmt.finalbody:
                self.err(stmt, "`finally` is not allowed (use except)")
            for handler in stmt.handlers:
                self.check_handler(handler, depth + 1)
            for block in (stmt.body, stmt.orelse):
                for sub in block:
                    self.check_stmt(sub, depth + 1)
            return
        if isinstance(stmt, ast.Raise) and stmt.cause is not None:
            self.err(stmt, "`raise ... from ...` is not allowed")
        for field, value in ast.iter_fields(stmt):
            if field == "type_comment":
                continue
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.stmt):
                    self.check_stmt(child, depth + 1)
                elif isinstance(child, ast.AST):
                    self.check_expr(child, depth + 1)

    def check_handler(self, handler: ast.ExceptHandler, depth: int) -> None:
        """``except <allowed exception>[ as name]:`` only; no bare except, no BaseException."""
        if handler.type is None:
            self.err(handler, "bare `except:` is not allowed; use `except Exception:`")
        else:
            types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            for t in types:
                if not (isinstance(t, ast.Name) and t.id in SAFE_EXCEPTIONS):
                    self.err(handler, f"can only catch {', '.join(sorted(SAFE_EXCEPTIONS))}")
        if handler.name is not None:
            self.check_name(handler, handler.name)
        for sub in handler.body:
            self.check_stmt(sub, depth + 1)

    # ------------------------------------------------------------------ expressions

    def check_name(self, node: ast.AST, name: str) -> None:
        """No dunders; no dangerous builtin names in any role."""
        if "__" in name:
            self.err(node, f"names containing '__' are not allowed: `{name}`")
        elif name in _FORBIDDEN_NAMES:
            self.err(node, f"`{name}` is not allowed")

    def check_expr(self, node: ast.AST, depth: int) -> None:
        """One expression subtree."""
        if depth > MAX_DEPTH:
            self.err(node, f"expression nested deeper than {MAX_DEPTH}")
            return
        if not isinstance(node, _ALLOWED_EXPR):
            what = {ast.Lambda: "lambda", ast.NamedExpr: "`:=`", ast.Yield: "yield", ast.YieldFrom: "yield"}
            self.err(node, f"{what.get(type(node), type(node).__name__)} not allowed in a workflow")
            return
        if isinstance(node, ast.Name):
            self.check_name(node, node.id)
            if node.id == "ops":
                self.err(node, "`ops` may only be used as `await ops.<operator>(...)`")
        elif isinstance(node, ast.Constant):
            self.check_constant(node)
        elif isinstance(node, ast.Attribute) and "__" in node.attr:
            self.err(node, f"dunder attribute `.{node.attr}` is not allowed")
            return
        elif isinstance(node, ast.Attribute):
            self.err(node, f"attribute access `.{node.attr}` is only allowed as a method call "
                     f"or as `await ops.<operator>(...)`")
            return
        elif isinstance(node, ast.Await):
            if not self._is_ops_call(node.value):
                self.err(node, "`await` is only allowed on `ops.<operator>(...)` calls")
                return
            self.check_ops_call(node.value, depth)
            return
        elif isinstance(node, ast.Call):
            self.check_call(node, depth)
            return
        elif isinstance(node, ast.FormattedValue):
            self.check_format_spec(node)
            self.check_expr(node.value, depth + 1)
            return
        elif isinstance(node, ast.BinOp):
            self.check_folded(node)
        for child in ast.iter_child_nodes(node):
            self.check_expr(child, depth + 1)

    @staticmethod
    def _is_ops_call(node: ast.AST) -> bool:
        return (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "ops"
        )

    def check_ops_call(self, call: ast.Call, depth: int) -> None:
        """``ops.<name>(...)`` with a known operator name."""
        name = call.func.attr
        if name not in self.ops:
            self.err(call, f"unknown operator `ops.{name}`; known: {', '.join(sorted(self.ops)) or '(none)'}")
        for child in [*call.args, *call.keywords]:
            self.check_expr(child, depth + 1)

    def check_call(self, call: ast.Call, depth: int) -> None:
        """Calls: allowed builtins, allowed exception constructors, or allowed method names."""
        func = call.func
        if self._is_ops_call(call):
            self.err(call, f"operator calls must be awaited: `await ops.{func.attr}(...)`")
        elif isinstance(func, ast.Name):
            if func.id not in SAFE_BUILTINS and func.id not in SAFE_EXCEPTIONS:
                self.check_name(func, func.id)
                if func.id not in _FORBIDDEN_NAMES and "__" not in func.id:
                    self.err(func, f"cannot call `{func.id}`; callable builtins: {', '.join(sorted(SAFE_BUILTINS))}")
        elif isinstance(func, ast.Attribute):
            if "__" in func.attr:
                self.err(func, f"dunder attribute `.{func.attr}` is not allowed")
            elif func.attr not in SAFE_METHODS:
                self.err(func, f"method `.{func.attr}()` is not allowed")
            self.check_expr(func.value, depth + 1)
        else:
            self.err(call, "only named functions and methods may be called")
            self.check_expr(func, depth + 1)
        for child in [*call.args, *call.keywords]:
            if isinstance(child, ast.keyword) and child.arg is not None and "__" in child.arg:
                self.err(child, f"keyword `{child.arg}` is not allowed")
            self.check_expr(child, depth + 1)

    def check_constant(self, node: ast.Constant) -> None:
        """Bounded literal sizes."""
        value = node.value
        if isinstance(value, (str, bytes)) and len(value) > MAX_STR_CONST:
            self.err(node, f"literal of {len(value)} chars exceeds {MAX_STR_CONST}")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT_CONST:
            self.err(node, f"integer literal larger than {MAX_INT_CONST}")
        elif isinstance(value, complex) or value is Ellipsis:
            self.err(node, f"literal {value!r} is not allowed")

    def check_format_spec(self, node: ast.FormattedValue) -> None:
        """f-string format specs must be short constant specs (no nested fields, no huge widths)."""
        spec = node.format_spec
        if spec is None:
            return
        parts = spec.values if isinstance(spec, ast.JoinedStr) else [spec]
        if not all(isinstance(p, ast.Constant) and isinstance(p.value, str) for p in parts):
            self.err(node, "f-string format specs must be constant")
            return
        text = "".join(p.value for p in parts)
        if not _FORMAT_SPEC.match(text):
            self.err(node, f"f-string format spec {text!r} is not allowed")

    def check_folded(self, node: ast.BinOp) -> None:
        """Reject constant arithmetic that would build a huge value (``'a' * 10**9``, ``9**9**9``)."""
        try:
            fold(node)
        except TooBig as exc:
            self.err(node, f"constant expression too large: {exc}")
        except NotConstant:
            pass


# Every builtin not allowed, so that even naming them (e.g. passing `getattr` as a key) is refused.
_FORBIDDEN_NAMES = frozenset(
    n for n in builtins.__dict__ if n not in SAFE_BUILTINS and n not in SAFE_EXCEPTIONS
) | {ENTRY_POINT}


def validation_error(code: str, operator_names: tuple[str, ...]) -> str | None:
    """The runtime validator's message for ``code``, or None when the program is valid."""
    try:
        validate_workflow(code, operator_names)
    except WorkflowValidationError as exc:
        return str(exc)
    return None
