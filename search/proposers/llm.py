"""The ``llm`` proposer: AFlow's optimizer prompt on any chat model (:class:`operators.base.LLMClient`).

The prompt shows the task, the operators (rendered by ``operators.registry.describe_operators``,
never hand-typed), the parent workflow and its score, what earlier modifications of this parent
did and scored, and a few failed problems with expected vs produced answers. The reply's code is
parsed robustly (fenced block, ``<graph>``/``<code>`` tag, or bare source); what cannot be parsed
is still returned (the driver stores it as an invalid workflow with its error).
"""

from __future__ import annotations

import asyncio
import re

from operators.base import ENTRY_POINT, LLMClient, LLMRequest
from operators.registry import describe_operators
from search.base import Candidate, Generation, ProposalContext

OPTIMIZER_PROMPT = """You improve workflow programs that solve problems of this task:
{task}

A workflow is Python source with exactly one function `async def {entry}(problem, ops)`. Inside it, call
operators only as `await ops.<name>(...)`, use plain control flow (if/for/while), string and list
operations and literals; no imports, no other functions. The returned value is the answer.

Operators (name, signature, what it does):
{operators}

Current workflow (validation score {score:.1f}%):
```python
{code}
```
{history}{failures}
Propose ONE modification that should raise the score: for example add or replace an operator, change
an instruction string, or route one kind of problem (recognised by words in its text) to a different
operator combination. Reply with a one-sentence <modification>...</modification> and then the complete
new workflow in one ```python fenced block."""

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
_TAGS = re.compile(r"<(graph|code|workflow)>(.*?)</\1>", re.DOTALL)
_MODIFICATION = re.compile(r"<modification>(.*?)</modification>", re.DOTALL)


def render_prompt(context: ProposalContext, max_failures: int = 4, max_history: int = 5) -> str:
    """The optimizer prompt for one parent (deterministic for a given context)."""
    history = ""
    if context.history:
        lines = [f"- {summary} -> {score * 100:.1f}%" for summary, score in context.history[-max_history:]]
        history = "\nEarlier modifications of this workflow and their scores:\n" + "\n".join(lines) + "\n"
    failures = ""
    if context.failures:
        blocks = []
        for f in context.failures[:max_failures]:
            produced = f.produced if f.produced is not None else "(no output)"
            error = f"\nError: {f.error}" if f.error else ""
            blocks.append(f"Problem: {f.problem}\nExpected: {f.expected}\nProduced: {produced}{error}")
        failures = "\nProblems the current workflow got wrong:\n\n" + "\n\n".join(blocks) + "\n"
    return OPTIMIZER_PROMPT.format(
        task=context.task_description, entry=ENTRY_POINT, operators=describe_operators(context.operator_names),
        score=context.parent_score * 100, code=context.parent_code.rstrip(), history=history, failures=failures,
    )


def extract_workflow_code(text: str) -> str | None:
    """The workflow source in a model reply: the first fenced block or tag that defines ``solve``,
    else the text from ``async def solve`` on; None when there is no such function."""
    marker = f"async def {ENTRY_POINT}"
    blocks = [m.group(1) for m in _FENCE.finditer(text)] + [m.group(2) for m in _TAGS.finditer(text)]
    for block in blocks:
        if marker in block:
            return block.strip("\n") + "\n"
    start = text.find(marker)
    if start < 0:
        return None
    return text[start:].split("```")[0].rstrip() + "\n"


class LLMProposer:
    """Proposer that asks a chat model for ``n`` improved workflows (one request per child)."""

    name = "llm"

    def __init__(self, client: LLMClient, temperature: float = 0.8, max_tokens: int = 1500,
                 sampler: str = "llm"):
        """``client`` is any chat endpoint; sampling uses top_p = 1 so the samples are unbiased."""
        self.client = client
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.sampler = sampler

    async def propose(self, context: ProposalContext, n: int, seed: int) -> list[Candidate]:
        """``n`` candidates, request ``i`` seeded with ``seed + i`` (a cache replays them exactly)."""
        prompt = render_prompt(context)
        requests = [
            LLMRequest(messages=(("user", prompt),), temperature=self.temperature, top_p=1.0,
                       max_tokens=self.max_tokens, seed=seed + i)
            for i in range(n)
        ]
        responses = await asyncio.gather(*(self.client.complete(r) for r in requests))
        out = []
        for response in responses:
            for choice in response.choices[:1]:
                code = extract_workflow_code(choice.text)
                mod = _MODIFICATION.search(choice.text)
                generation = Generation(
                    prompt_text=prompt, completion_text=choice.text,
                    sampler=f"{self.sampler}:{response.model}" if response.model else self.sampler,
                    temperature=self.temperature, top_p=1.0,
                )
                out.append(Candidate(
                    code=code if code is not None else choice.text, source="llm", generation=generation,
                    description=(mod.group(1).strip() if mod else "llm rewrite")[:200],
                    meta={"parsed": code is not None},
                ))
        return out
