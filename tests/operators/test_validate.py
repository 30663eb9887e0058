"""Validator: accepts real workflows, rejects hostile ones with precise, line-numbered messages."""

from __future__ import annotations

import pytest

from operators.validate import WorkflowValidationError, code_hash, validate_workflow
from workflow_rl.tasks import get_benchmark

OPS = {"calculate", "extract_expression", "echo"}

GOOD = '''"""Route on a keyword."""
PROMPT = "Answer briefly: "


async def solve(problem, ops):
    text = problem.strip()
    parts = [p.lower() for p in text.split(",") if p]
    total = 0
    for i, part in enumerate(parts):
        try:
            total += int(part)
        except (ValueError, TypeError):
            continue
    if "=" in text and total > 2:
        expr = await ops.extract_expression(text)
        answer = await ops.calculate(expression=expr)
    else:
        answer = await ops.echo(f"{PROMPT}{total:>5}{text!r}")
    counts = {k: len(k) for k in parts}
    while total > 100:
        total //= 2
    return str(answer) + str(sorted(counts.items())[:1])
'''


def test_accepts_a_rich_program():
    tree = validate_workflow(GOOD, OPS)
    assert tree.body[-1].name == "solve"


def test_accepts_every_calc_workflow():
    bench = get_benchmark("calc")
    programs = [*bench.seed_workflows().values(), *bench.oracle_workflows().values(), bench.routed_workflow()]
    for code in programs:
        validate_workflow(code, bench.operator_names)


def _solve(body: str) -> str:
    lines = body.strip("\n").splitlines()
    return "async def solve(problem, ops):\n" + "\n".join("    " + line for line in lines) + "\n"


# (program, expected line, fragment of the message)
HOSTILE = [
    ("import os\nasync def solve(problem, ops):\n    return 1\n", 1, "imports are not allowed"),
    (_solve("import os\nreturn os.name"), 2, "imports not allowed"),
    (_solve("from os import system\nreturn 1"), 2, "imports not allowed"),
    (_solve("return __import__('os')"), 2, "'__' are not allowed"),
    (_solve("return ().__class__.__bases__[0].__subclasses__()"), 2, "dunder attribute"),
    (_solve("x = [c for c in ().__class__.__mro__]\nreturn x"), 2, "dunder attribute `.__mro__`"),
    (_solve("return getattr(problem, 'upper')()"), 2, "`getattr` is not allowed"),
    (_solve("f = getattr\nreturn f(problem, 'x')"), 2, "`getattr` is not allowed"),
    (_solve("return open('/etc/passwd').read()"), 2, "`open` is not allowed"),
    (_solve("exec('import os')\nreturn 1"), 2, "`exec` is not allowed"),
    (_solve("return eval('1+1')"), 2, "`eval` is not allowed"),
    (_solve("return compile('1', 'x', 'eval')"), 2, "`compile` is not allowed"),
    (_solve("return globals()"), 2, "`globals` is not allowed"),
    (_solve("return vars()"), 2, "`vars` is not allowed"),
    (_solve("return type(problem)"), 2, "`type` is not allowed"),
    (_solve("return object"), 2, "`object` is not allowed"),
    (_solve("f = lambda: 1\nreturn 1"), 2, "lambda not allowed"),
    (_solve("def helper():\n    return 1\nreturn helper()"), 2, "nested functions not allowed"),
    (_solve("class A:\n    pass\nreturn 1"), 2, "classes not allowed"),
    (_solve("global x\nreturn 1"), 2, "`global` not allowed"),
    (_solve("return 'a' * 10**9"), 2, "constant expression too large"),
    (_solve("return 9 ** 9 ** 9"), 2, "constant expression too large"),
    (_solve("return [0] * 10**8"), 2, "constant expression too large"),
    (_solve("return 10**100"), 2, "constant expression too large"),
    (_solve("return 123456789012345678901234567890"), 2, "integer literal larger"),
    (_solve("return '{0.__class__}'.format(problem)"), 2, "method `.format()` is not allowed"),
    (_solve("return '{x}'.format_map({'x': 1})"), 2, "method `.format_map()` is not allowed"),
    (_solve("g = (x for x in [1])\nreturn g.gi_frame.f_back"), 3, "attribute access `.f_back`"),
    (_solve("return problem.gi_frame"), 2, "attribute access `.gi_frame`"),
    (_solve("try:\n    pass\nexcept:\n    pass\nreturn 1"), 4, "bare `except:`"),
    (_solve("try:\n    pass\nexcept BaseException:\n    pass\nreturn 1"), 4, "can only catch"),
    (_solve("try:\n    return 1\nfinally:\n    pass"), 2, "`finally` is not allowed"),
    (_solve("yield 1"), 2, "yield not allowed"),
    (_solve("return await ops.system('ls')"), 2, "unknown operator `ops.system`"),
    (_solve("return ops.echo(problem)"), 2, "must be awaited"),
    (_solve("f = ops.echo\nreturn await f(problem)"), 2, "attribute access `.echo`"),
    (_solve("return await problem"), 2, "`await` is only allowed"),
    (_solve("return f'{problem:{problem}}'"), 2, "format specs must be constant"),
    (_solve("return f'{problem:>99999999}'"), 2, "format spec"),
    (_solve("return breakpoint()"), 2, "`breakpoint` is not allowed"),
    (_solve("return solve(problem, ops)"), 2, "`solve` is not allowed"),
    (_solve("x = {}\nx.__setitem__ = 1\nreturn x"), 3, "dunder attribute"),
    (_solve("return (y := 5)"), 2, "`:=` not allowed"),
    (_solve("return str(problem, __builtins__)"), 2, "'__' are not allowed"),
    (_solve("with open('x') as f:\n    pass"), 2, "`with` not allowed"),
    ("def solve(problem, ops):\n    return 1\n", 1, "must be `async def solve(problem, ops)`"),
    ("async def solve(problem, ops, extra=1):\n    return 1\n", 1, "signature must be"),
    ("async def main(problem, ops):\n    return 1\n", 1, "must be named `solve`"),
    ("x = [1]\nasync def solve(problem, ops):\n    return 1\n", 1, "only `async def solve"),
    ("async def solve(problem, ops):\n    return (\n", 2, "syntax error"),
]


@pytest.mark.parametrize("program,line,fragment", HOSTILE, ids=[f"h{i:02d}" for i in range(len(HOSTILE))])
def test_rejects_hostile_program(program, line, fragment):
    with pytest.raises(WorkflowValidationError) as info:
        validate_workflow(program, OPS)
    err = info.value
    assert isinstance(err, ValueError)
    assert any(fragment in msg for _, msg in err.errors), err.errors
    assert any(lineno == line for lineno, _ in err.errors), err.errors
    assert f"line {err.errors[0][0]}: " in str(err)


def test_reports_every_violation_with_its_line():
    program = _solve("import os\nx = eval('1')\nreturn x.__class__")
    with pytest.raises(WorkflowValidationError) as info:
        validate_workflow(program, OPS)
    assert [line for line, _ in info.value.errors] == [2, 3, 4]
    assert str(info.value) == (
        "line 2: imports not allowed in a workflow; line 3: `eval` is not allowed; "
        "line 4: dunder attribute `.__class__` is not allowed"
    )


def test_rejects_non_string_and_oversized_source():
    with pytest.raises(WorkflowValidationError, match="must be a str"):
        validate_workflow(b"async def solve(problem, ops): pass", OPS)
    with pytest.raises(WorkflowValidationError, match="limit is"):
        validate_workflow("#" * 60_000, OPS)


def test_deep_nesting_is_rejected_not_crashing():
    program = _solve("return " + "(" * 80 + "1" + ")" * 80)
    deep = _solve("return " + "[" * 80 + "]" * 80)
    validate_workflow(program, OPS)  # redundant parentheses are not nesting
    with pytest.raises(WorkflowValidationError, match="nested deeper"):
        validate_workflow(deep, OPS)


def test_code_hash_ignores_formatting_and_comments():
    a = "async def solve(problem, ops):\n    return await ops.echo(problem)\n"
    b = "# header\nasync def solve(problem,ops):   # entry\n\n    return await ops.echo( problem )\n"
    c = "async def solve(problem, ops):\n    return await ops.echo(problem + 'x')\n"
    assert code_hash(a) == code_hash(b)
    assert code_hash(a) != code_hash(c)
    assert len(code_hash(a)) == 64
    assert code_hash("def (") != code_hash("def ((")  # unparseable code still hashes (its raw text)


def test_checking_generated_code_prints_no_syntax_warnings():
    """A policy writes thousands of programs like ``3if``; the parser's SyntaxWarning for each one
    must not flood the CLI's stderr (the plain parser does print it: the control below)."""
    import subprocess
    import sys

    program = "async def solve(problem, ops):\n    return 3if problem else 2\n"
    control = subprocess.run([sys.executable, "-c", f"import ast; ast.parse({program!r})"],
                             capture_output=True, text=True, check=True)
    assert "SyntaxWarning" in control.stderr
    checked = subprocess.run(
        [sys.executable, "-c", f"from operators.validate import validate_workflow as v; v({program!r}, ())"],
        capture_output=True, text=True, check=True)
    assert checked.stderr == ""
