"""Sandbox: LLM operators run as asyncio Tasks; an outage (InfrastructureError) aborts, never scores 0."""

from __future__ import annotations

import asyncio
import socket

import pytest

from operators.base import InfrastructureError, OpContext, Operator
from operators.registry import get_operators
from operators.runtime import Sandbox
from workflow_rl.llm import OpenAICompatibleClient
from workflow_rl.llm.openai import LLMEndpointUnavailable
from workflow_rl.llm.testing import ScriptedOpenAIServer, ScriptedReply


def _closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _in_task(ctx: OpContext, text: str) -> str:
    return f"{text}:{asyncio.current_task() is not None}"


async def _outage(ctx: OpContext, text: str) -> str:
    if text == "down":
        raise InfrastructureError("endpoint down")
    await asyncio.sleep(0.05 if text == "slow" else 0)
    return text


OPS = {
    "probe": Operator("probe", _in_task, "probe(text: str) -> str", "Says whether it runs in a Task.", kind="llm"),
    "fetch": Operator("fetch", _outage, "fetch(text: str) -> str", "Fails with an outage on 'down'.", kind="llm"),
    "fetch_tool": Operator("fetch_tool", _outage, "fetch_tool(text: str) -> str", "The same, as a tool."),
}

PROBE = "async def solve(problem, ops):\n    return await ops.probe(problem)\n"
# The workflow tries to swallow operator failures: an outage must not reach it.
FETCH = """async def solve(problem, ops):
    try:
        return await ops.fetch(problem)
    except Exception:
        return 'swallowed'
"""
FETCH_TOOL = FETCH.replace("ops.fetch(", "ops.fetch_tool(")


def test_llm_operator_first_step_runs_inside_a_task():
    async def main():
        async with Sandbox(OPS, workers=1) as box:
            return await box.run(PROBE, "x")

    result = asyncio.run(main())
    assert result.ok and result.output == "x:True", result


@pytest.mark.parametrize("code", [FETCH, FETCH_TOOL], ids=["llm-kind", "tool-kind"])
def test_outage_raises_from_run_and_cancels_the_batch(code):
    async def main():
        async with Sandbox(OPS, workers=2) as box:
            assert (await box.run(code, "fine")).output == "fine"
            with pytest.raises(InfrastructureError, match="endpoint down"):
                await box.run(code, "down")
            with pytest.raises(InfrastructureError, match="endpoint down"):
                await box.run_many([(code, "slow"), (code, "down"), (code, "slow")])
            # Nothing of the failed executions lingers and the sandbox keeps working.
            assert all(not w.live for w in box._workers)
            return await box.run_many([(code, "a"), (code, "b")])

    assert [r.output for r in asyncio.run(main())] == ["a", "b"]


def _answer_workflow() -> str:
    return "async def solve(problem, ops):\n    return (await ops.answer_generate(problem))['answer']\n"


def test_closed_port_aborts_instead_of_operator_error():
    client = OpenAICompatibleClient(f"http://127.0.0.1:{_closed_port()}/v1", "m", max_attempts=2,
                                    backoff_base_s=0.01)

    async def main():
        ops = get_operators(["answer_generate"])
        async with Sandbox(ops, lambda: OpContext(llm=client), workers=1) as box:
            await box.run_many([(_answer_workflow(), "1+1?"), (_answer_workflow(), "2+2?")])

    with pytest.raises(LLMEndpointUnavailable, match="gave up after 2 attempts"):
        asyncio.run(main())


def test_rejected_request_is_an_operator_error_of_that_workflow():
    """HTTP 400 (e.g. a prompt longer than the context) is the workflow's failure, not an outage."""
    with ScriptedOpenAIServer() as server:
        server.enqueue(ScriptedReply(status=400, body='{"error": "context length exceeded"}'))
        client = OpenAICompatibleClient(server.url, "m", max_attempts=1)

        async def main():
            ops = get_operators(["answer_generate"])
            async with Sandbox(ops, lambda: OpContext(llm=client), workers=1) as box:
                return await box.run(_answer_workflow(), "1+1?")

        result = asyncio.run(main())
    assert result.error_kind == "operator_error" and "HTTP 400" in result.error_message
