"""Every LLM operator against a local scripted OpenAI-compatible server (real HTTP, real client)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from operators.base import CodeResult, OpContext, OperatorError
from operators.llm_parse import extract_code, extract_doctest_asserts, extract_public_tests, extract_tag
from operators.registry import get_operators
from workflow_rl.llm import OpenAICompatibleClient, PriceTable, ResponseCache
from workflow_rl.llm.testing import ScriptedOpenAIServer, ScriptedReply

LLM_OPS = ("custom", "answer_generate", "code_generate", "sc_ensemble", "review", "revise", "format",
           "programmer", "test")


async def subprocess_runner(source: str, *, stdin: str = "", timeout_s: float = 5.0) -> CodeResult:
    """Plain subprocess runner for these tests (the product uses operators.runtime's sandbox)."""

    def run() -> CodeResult:
        try:
            p = subprocess.run([sys.executable, "-I", "-c", source], input=stdin, capture_output=True,
                               text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return CodeResult(ok=False, error_kind="timeout", error_message="timed out")
        err = p.stderr.strip().splitlines()[-1] if p.returncode and p.stderr.strip() else None
        return CodeResult(ok=p.returncode == 0, stdout=p.stdout, stderr=p.stderr,
                          error_kind=None if p.returncode == 0 else "crash", error_message=err)

    return await asyncio.to_thread(run)


@pytest.fixture
def server():
    with ScriptedOpenAIServer() as srv:
        yield srv


def make_ctx(srv, **kw) -> OpContext:
    prices = PriceTable.from_dict({"m": {"prompt_per_million": 1e6, "completion_per_million": 1e6}})
    client = OpenAICompatibleClient(srv.url, "m", backoff_base_s=0.001, backoff_max_s=0.01, prices=prices, **kw)
    return OpContext(llm=client, run_code=subprocess_runner)


def run_op(name, ctx, *args, **kwargs):
    return asyncio.run(get_operators([name])[name].fn(ctx, *args, **kwargs))


def test_all_llm_operators_registered_with_descriptions():
    ops = get_operators(LLM_OPS)
    for op in ops.values():
        assert op.kind == "llm" and op.signature.startswith(op.name + "(") and len(op.description) > 60


def test_no_executor_is_an_operator_error():
    with pytest.raises(OperatorError, match="needs an LLM executor"):
        run_op("custom", OpContext(), "x", "y")


def test_custom_and_usage_cost(server):
    ctx = make_ctx(server)
    server.enqueue("four words of reply")
    assert run_op("custom", ctx, "Translate:", input="hola") == "four words of reply"
    assert server.requests[-1]["messages"][0]["content"] == "Translate:\n\nhola"
    # prompt "Translate:\n\nhola" = 2 tokens, completion 4 tokens, $1 per token each
    assert (ctx.usage.prompt_tokens, ctx.usage.completion_tokens, ctx.usage.llm_calls) == (2, 4, 1)
    assert ctx.usage.cost == pytest.approx(6.0)


def test_answer_generate_parses_and_rejects_malformed(server):
    ctx = make_ctx(server)
    server.enqueue("<thought>2+2</thought>\n<answer> 4 </answer>", "I think it's 4")
    assert run_op("answer_generate", ctx, "2+2?") == "4"
    with pytest.raises(OperatorError) as err:
        run_op("answer_generate", ctx, "2+2?")
    assert err.value.raw == "I think it's 4"


def test_code_generate_extracts_entry_point(server):
    ctx = make_ctx(server)
    server.enqueue("Here:\n```python\ndef helper():\n    pass\n```\n```python\ndef add(a, b):\n    return a + b\n```",
                   "```python\ndef wrong(:\n```")
    assert run_op("code_generate", ctx, "add two numbers", "add").startswith("def add(a, b)")
    with pytest.raises(OperatorError, match="syntax error") as err:
        run_op("code_generate", ctx, "add two numbers", "add")
    assert "def wrong" in err.value.raw


def test_sc_ensemble_picks_letter(server):
    ctx = make_ctx(server)
    server.enqueue("<solution_letter>B</solution_letter>", "<solution_letter>Z</solution_letter>")
    assert run_op("sc_ensemble", ctx, ["x=1", "x=2", "x=2"], "find x") == "x=2"
    assert "A: x=1" in server.requests[-1]["messages"][0]["content"]
    with pytest.raises(OperatorError, match="not one of"):
        run_op("sc_ensemble", ctx, ["a", "b"], "p")
    with pytest.raises(OperatorError, match="non-empty list"):
        run_op("sc_ensemble", ctx, "not a list", "p")


def test_review_revise_format(server):
    ctx = make_ctx(server)
    server.enqueue("<review_result>False</review_result><feedback>off by one</feedback>",
                   "<review_result>maybe</review_result>",
                   "<solution>x = 3</solution>",
                   "<answer>3</answer>")
    assert run_op("review", ctx, "p", "x = 2") == {"passed": False, "feedback": "off by one"}
    with pytest.raises(OperatorError, match="not true/false"):
        run_op("review", ctx, "p", "x = 2")
    assert run_op("revise", ctx, "p", "x = 2", "off by one") == "x = 3"
    assert run_op("format", ctx, "p", "so x = 3") == "3"
    server.enqueue("<solution>x = 3</solution>")
    verdict = {"passed": False, "feedback": "off by one"}
    assert run_op("revise", ctx, "p", "x = 2", verdict) == "x = 3"  # review's dict passed straight on
    assert '"feedback": "off by one"' in server.requests[-1]["messages"][0]["content"]
    with pytest.raises(OperatorError, match="argument 'solution' must be a string, got NoneType"):
        run_op("revise", ctx, "p", None, "f")


def test_repeated_identical_calls_get_distinct_seeds_and_are_cached(server, tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    ctx = make_ctx(server, cache=cache)
    server.responder = lambda req: f"<answer>{req['seed']}</answer>"
    answers = [run_op("answer_generate", ctx, "q") for _ in range(3)]
    assert answers == ["0", "1", "2"] and server.request_count == 3
    # A fresh execution (new context) replays all three from the cache: no new request.
    ctx2 = make_ctx(server, cache=cache)
    assert [run_op("answer_generate", ctx2, "q") for _ in range(3)] == ["0", "1", "2"]
    assert server.request_count == 3 and ctx2.usage.cost == 0.0


def test_programmer_repairs_after_error(server):
    ctx = make_ctx(server)
    server.enqueue("```python\nprint(1/0)\n```", "```python\nprint(6*7)\n```")
    assert run_op("programmer", ctx, "6 times 7") == "42"
    repair_prompt = server.requests[-1]["messages"][0]["content"]
    assert "ZeroDivisionError" in repair_prompt


def test_programmer_gives_up_after_bounded_attempts(server):
    ctx = make_ctx(server)
    server.responder = lambda req: "```python\nraise ValueError('nope')\n```"
    with pytest.raises(OperatorError, match="no working program after 3 attempts"):
        run_op("programmer", ctx, "p")
    assert server.request_count == 3


PROBLEM = '''def inc(x):
    """Add one.
    >>> inc(1)
    2
    >>> inc(-1)
    0
    """
'''


def test_test_operator_repairs_failing_solution(server):
    ctx = make_ctx(server)
    server.enqueue("```python\ndef inc(x):\n    return x + 1\n```")
    fixed = run_op("test", ctx, PROBLEM, "def inc(x):\n    return x", "inc")
    assert fixed.strip() == "def inc(x):\n    return x + 1" and server.request_count == 1
    assert "AssertionError" in server.requests[0]["messages"][0]["content"]
    # A passing solution needs no model call at all.
    assert run_op("test", ctx, PROBLEM, fixed, "inc") == fixed and server.request_count == 1


def test_test_operator_uses_public_tests_from_extras(server):
    ctx = make_ctx(server)
    ctx.extras["public_tests"] = "assert inc(5) == 6"
    server.responder = lambda req: "```python\ndef inc(x):\n    return x\n```"  # never fixes it
    out = run_op("test", ctx, "increment", "def inc(x):\n    return x", "inc")
    assert out == "def inc(x):\n    return x" and server.request_count == 3
    assert "assert inc(5) == 6" in server.requests[0]["messages"][0]["content"]


def test_server_429_then_success_inside_operator(server):
    ctx = make_ctx(server)
    server.enqueue(ScriptedReply(status=429, body="{}"), "<answer>ok</answer>")
    assert run_op("format", ctx, "p", "s") == "ok" and ctx.usage.llm_calls == 1


def test_parse_helpers():
    assert extract_tag("<a>1</a> <a>2</a>", "a") == "2"
    assert extract_tag("<answer>cut off", "answer") == "cut off"
    assert extract_tag("nothing", "answer", required=False) is None
    assert extract_code("def f():\n    return 1", "f").startswith("def f")
    with pytest.raises(OperatorError, match="does not define g"):
        extract_code("```python\ndef f(): pass\n```", "g")
    asserts = extract_doctest_asserts(PROBLEM, "inc")
    assert asserts.splitlines()[0] == "assert (inc(1)) == (2), 'inc(1)'" and len(asserts.splitlines()) == 2


def test_test_operator_finds_assert_lines_in_problem_text(server):
    ctx = make_ctx(server)
    problem = 'Add two numbers.\n\ndef add_nums(a, b):\n    """Your code should pass this test:\n    assert add_nums(1, 2) == 3\n    """\n'
    assert extract_public_tests(problem, "add_nums") == "assert add_nums(1, 2) == 3"
    server.enqueue("```python\ndef add_nums(a, b):\n    return a + b\n```")
    fixed = run_op("test", ctx, problem, "def add_nums(a, b):\n    return a - b")  # entry point inferred
    assert "a + b" in fixed and server.request_count == 1


def test_lenient_parsing_for_small_models(server):
    """ctx.extras["llm_lenient"]: a reply without tags is the answer whole; sc_ensemble falls back to the majority."""
    ctx = make_ctx(server)
    ctx.extras["llm_lenient"] = True
    server.enqueue("I think it's 4", "<answer>5</answer>", "no idea which", "<solution_letter>Q</solution_letter>",
                   "The answer: 7")
    assert run_op("answer_generate", ctx, "2+2?") == "I think it's 4"
    assert run_op("answer_generate", ctx, "2+3?") == "5"
    assert run_op("sc_ensemble", ctx, ["3", "4", "4"], "p") == "4"  # no letter: the most common candidate
    assert run_op("sc_ensemble", ctx, ["a", "b"], "p") == "a"  # an unknown letter, a tie: the first
    assert run_op("format", ctx, "p", "so 7") == "The answer: 7"


def test_repeat_index_offsets_the_seed(server):
    """Repeat r of an evaluation sends seed occurrence + 1000 * r: fresh samples, still reproducible."""
    server.responder = lambda req: f"<answer>{req['seed']}</answer>"
    ctx = make_ctx(server)
    ctx.extras["llm_repeat"] = 2
    assert [run_op("answer_generate", ctx, "q") for _ in range(2)] == ["2000", "2001"]
