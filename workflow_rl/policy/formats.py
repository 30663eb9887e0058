"""The prompt format of a policy: how its prompt is rendered and how its reply becomes a program.

There is one format per kind of model, chosen from the tokenizer (:func:`prompt_format`), and every
place that samples or trains the policy goes through it, so the training prompt is the sampled one
token for token and the trained completion is the sampled one:

- :data:`PLAIN` (``builtin:tiny``, any tokenizer without a chat template): the short plain prompt
  (:func:`workflow_rl.policy.prompts.policy_prompt_for`); the completion IS the program, then EOS.
- :class:`ChatFormat` (an instruct model): a system message with the task, the operators
  (signatures and descriptions from the registry) and a worked example (a seed workflow), and a user
  message with the problem (and the parent workflow with its failures when the policy edits one),
  rendered by the tokenizer's own chat template with the assistant turn opened. The completion is
  the assistant's reply as sampled, ending with the end-of-turn token (the tokenizer's EOS); the
  program is its first fenced Python block, or the whole reply when there is none. Training uses
  the reply's tokens (fence and prose included) with the program's reward; a reply without a valid
  program is a reward-0 policy sample like any invalid program.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from workflow_rl.policy.prompts import PromptSpec, policy_prompt_for, render_operators

_OPEN = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n")
_PYTHON_TAGS = ("", "python", "py", "python3")


def fenced_program(reply: str) -> str:
    """The program in a chat reply: its first fenced Python block (```` ```python ```` or an untagged
    ```` ``` ````), else the whole reply; surrounding blank space removed.

    A block whose closing fence never came (the reply hit the token limit) runs to the end of the
    reply. Blocks tagged with another language are skipped.
    """
    pos = 0
    while (opening := _OPEN.search(reply, pos)) is not None:
        end = reply.find("```", opening.end())
        body = reply[opening.end():] if end < 0 else reply[opening.end():end]
        if opening.group(1).lower() in _PYTHON_TAGS:
            return body.strip("\n").rstrip()
        if end < 0:
            break
        pos = end + 3
    return reply.strip()


class PlainFormat:
    """The plain prompt of ``builtin:tiny``: the completion is the program itself."""

    chat = False

    def prompt(self, spec: PromptSpec, problem: str, parent_code: str | None = None,
               failures: Sequence[str] | None = None) -> str:
        """The short plain prompt (``spec.example`` is not used: the tiny model's context is small)."""
        return policy_prompt_for(spec.task_description, spec.operator_names, problem, parent_code, failures)

    def program(self, reply: str) -> str:
        """The program of a completion: the completion itself."""
        return reply

    def reply(self, code: str) -> str:
        """The completion text that writes ``code`` (search samples are trained on it): the code."""
        return code


PLAIN = PlainFormat()


class ChatFormat:
    """A chat prompt rendered with the tokenizer's chat template (see the module docstring)."""

    chat = True

    def __init__(self, tokenizer):
        """``tokenizer`` must have a ``chat_template``."""
        self.tokenizer = tokenizer

    @staticmethod
    def messages(spec: PromptSpec, problem: str, parent_code: str | None = None,
                 failures: Sequence[str] | None = None) -> list[dict[str, str]]:
        """The system and user messages of one prompt."""
        system = [
            "You write workflows: short async Python programs that answer a problem by calling operators.",
            f"Task: {spec.task_description.strip()}",
            "",
            "A workflow defines `async def solve(problem, ops)` and returns the answer. It may call only "
            "these operators, each with `await`:",
            render_operators(spec.operator_names).strip(),
        ]
        if spec.example:
            system += ["", "Example workflow:", f"```python\n{spec.example.strip()}\n```"]
        system += ["", "Reply with one workflow in a ```python code block."]
        user = [f"Problem: {problem.strip()}"]
        if parent_code:
            user += ["", "Current workflow:", f"```python\n{parent_code.strip()}\n```"]
            if failures:
                user += ["It got these problems wrong:", *(f"- {f.strip()}" for f in failures)]
            user += ["Write an improved workflow."]
        return [{"role": "system", "content": "\n".join(system)}, {"role": "user", "content": "\n".join(user)}]

    def prompt(self, spec: PromptSpec, problem: str, parent_code: str | None = None,
               failures: Sequence[str] | None = None) -> str:
        """The chat template's text of :meth:`messages` with the assistant's turn opened."""
        return self.tokenizer.apply_chat_template(self.messages(spec, problem, parent_code, failures),
                                                  tokenize=False, add_generation_prompt=True)

    def program(self, reply: str) -> str:
        """The program of a reply (:func:`fenced_program`)."""
        return fenced_program(reply)

    def reply(self, code: str) -> str:
        """The reply that writes ``code`` as the system message asks: one fenced block."""
        return f"```python\n{code.strip()}\n```"


def prompt_format(tokenizer) -> PlainFormat | ChatFormat:
    """:class:`ChatFormat` when ``tokenizer`` has a chat template, else :data:`PLAIN`."""
    return ChatFormat(tokenizer) if getattr(tokenizer, "chat_template", None) else PLAIN
