"""Every LLM operator once against the real SmolLM2-135M (llama.cpp, ``smollm2_server``).

A 135M model with a 16-token budget rarely follows the reply formats, which is the point: each
operator must either return its typed result or raise :class:`OperatorError` with the model's raw
reply kept, never any other exception, whatever the model writes.
"""

from __future__ import annotations

import pytest

from operators.base import OpContext, OperatorError
from tests.operators.test_llm_ops import LLM_OPS, run_op, subprocess_runner  # the scripted-server tests
from workflow_rl.llm import OpenAICompatibleClient, parse_executor_spec

SUM = "What is 2 plus 3?"
ADD = 'def add(a, b):\n    """Return the sum of a and b.\n\n    >>> add(2, 3)\n    5\n    """\n'
CALLS = {
    "custom": (("Answer with one word.", "What colour is the sky?"), str),
    "answer_generate": ((SUM,), str),
    "code_generate": ((ADD,), str),
    "sc_ensemble": ((["5", "5", "6"], SUM), str),
    "review": ((SUM, "The answer is 6."), dict),
    "revise": ((SUM, "The answer is 6.", "2 plus 3 is not 6."), str),
    "format": ((SUM, "Two plus three makes 5, so the answer is 5."), str),
    "programmer": ((SUM,), str),
    "test": ((ADD, "def add(a, b):\n    return a - b\n"), str),  # fails its doctest: asks for repairs
}


@pytest.fixture(scope="module")
def client(smollm2_server) -> OpenAICompatibleClient:
    spec = parse_executor_spec(smollm2_server)
    return OpenAICompatibleClient(spec.url, spec.model, max_concurrency=1, timeout_s=300)


def test_every_llm_operator_is_covered():
    assert set(CALLS) == set(LLM_OPS)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_operator_on_the_real_model_returns_its_type_or_an_operator_error(client, name):
    args, kind = CALLS[name]
    ctx = OpContext(llm=client, run_code=subprocess_runner, extras={"llm_max_tokens": 16, "llm_temperature": 0.7})
    try:
        result = run_op(name, ctx, *args)
    except OperatorError as exc:
        assert isinstance(exc.raw, str) and exc.raw, f"{name}: operator error without the raw reply: {exc}"
    else:
        assert isinstance(result, kind), f"{name} returned {type(result).__name__}: {result!r}"
        if name == "review":
            assert isinstance(result["passed"], bool) and isinstance(result["feedback"], str)
        if name == "sc_ensemble":
            assert result in args[0]
    assert ctx.usage.llm_calls >= 1 and ctx.usage.prompt_tokens > 0  # it really asked the model
