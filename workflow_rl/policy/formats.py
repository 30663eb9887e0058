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

  Operators are rendered ``full`` (signature and whole description) or ``short`` (signature and the
  description's first clause, at most :data:`SHORT_WORDS` words): on calc that is 503 tokens of
  operator text instead of 1,427, and every prefill, training forward and backward scales with the
  prompt. Which one a policy uses goes with its weights: a model directory may hold
  :data:`FORMAT_FILE` (the format warm start writes one, :mod:`workflow_rl.policy.warm_start`),
  since a base trained on one rendering should be asked in it; without one it is ``full``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from workflow_rl.policy.prompts import PromptSpec, policy_prompt_for, render_operators

_OPEN = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n")
_PYTHON_TAGS = ("", "python", "py", "python3")
# A description's first clause ends at punctuation, a bracket or an "e.g." (examples are long).
_CLAUSE = re.compile(r"[.;:,(]\s|\s\(|\s+e\.g\.|$")

OPERATOR_DETAILS = ("full", "short")
"""How a chat prompt renders operators (see the module docstring)."""

SHORT_WORDS = 12
"""Longest ``short`` operator description, in words."""

FORMAT_FILE = "workflow_rl_format.json"
"""Optional file of a model directory: ``{"operators": "full" | "short"}``, the rendering it was trained on."""


def short_description(description: str) -> str:
    """The first clause of an operator description, at most :data:`SHORT_WORDS` words."""
    text = description.strip()
    return " ".join(text[:_CLAUSE.search(text).start()].split()[:SHORT_WORDS])


def render_operators_short(operator_names: Iterable[str] | None) -> str:
    """``- ops.signature: first clause`` lines, straight from the registry."""
    from operators.registry import get_operators

    names = None if operator_names is None else list(operator_names)
    return "\n".join(f"- ops.{op.signature}: {short_description(op.description)}"
                     for op in get_operators(names).values())


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

    def __init__(self, tokenizer, operators: str = "full"):
        """``tokenizer`` must have a ``chat_template``; ``operators`` is one of :data:`OPERATOR_DETAILS`."""
        if operators not in OPERATOR_DETAILS:
            raise ValueError(f"operators={operators!r}: use one of {OPERATOR_DETAILS}")
        self.tokenizer = tokenizer
        self.operators = operators

    def messages(self, spec: PromptSpec, problem: str, parent_code: str | None = None,
                 failures: Sequence[str] | None = None) -> list[dict[str, str]]:
        """The system and user messages of one prompt."""
        operators = (render_operators(spec.operator_names) if self.operators == "full"
                     else render_operators_short(spec.operator_names))
        system = [
            "You write workflows: short async Python programs that answer a problem by calling operators.",
            f"Task: {spec.task_description.strip()}",
            "",
            "A workflow defines `async def solve(problem, ops)` and returns the answer. It may call only "
            "these operators, each with `await`:",
            operators.strip(),
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

    @functools.cached_property
    def _user_turn(self) -> tuple[int, ...] | None:
        """Token ids that open the user's turn in this template (``<|im_start|>user`` for ChatML), or
        None when the template renders a system message differently once a user turn follows it."""
        system = [{"role": "system", "content": "S"}]
        alone = self.tokenizer.apply_chat_template(system, tokenize=False)
        both = self.tokenizer.apply_chat_template([*system, {"role": "user", "content": "U"}], tokenize=False)
        if not both.startswith(alone) or "U" not in both[len(alone):]:
            return None
        turn = both[len(alone): len(alone) + both[len(alone):].index("U")].strip()
        ids = tuple(self.tokenizer(turn, add_special_tokens=False)["input_ids"]) if turn else ()
        return ids or None

    def shared_prefix(self, ids) -> int:
        """How many leading tokens of the prompt ``ids`` are its system message, which every problem's
        prompt of a benchmark shares: up to the last opening of a user turn (0 when there is none).
        The sampler and the learner run that part once per call (:func:`workflow_rl.policy.decode._prefill_prompts`)."""
        marker = self._user_turn
        if marker is None:
            return 0
        ids, k = tuple(ids), len(marker)
        for i in range(len(ids) - k, 0, -1):
            if ids[i : i + k] == marker:
                return i
        return 0

    def program(self, reply: str) -> str:
        """The program of a reply (:func:`fenced_program`)."""
        return fenced_program(reply)

    def reply(self, code: str) -> str:
        """The reply that writes ``code`` as the system message asks: one fenced block."""
        return f"```python\n{code.strip()}\n```"


def format_options(model_dir: str | Path | None) -> dict[str, str]:
    """The :data:`FORMAT_FILE` settings of a model directory (empty when it has none)."""
    path = Path(model_dir) / FORMAT_FILE if model_dir is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def prompt_format(tokenizer, model_dir: str | Path | None = None) -> PlainFormat | ChatFormat:
    """:class:`ChatFormat` when ``tokenizer`` has a chat template (its operator rendering from
    ``model_dir``'s :data:`FORMAT_FILE`, else ``full``), else :data:`PLAIN`."""
    if not getattr(tokenizer, "chat_template", None):
        return PLAIN
    return ChatFormat(tokenizer, format_options(model_dir).get("operators", "full"))
