"""The one policy prompt, shared by sampling and training (docs/design.md, one round, step 2).

Short on purpose: the built-in tiny model has a small context and learns faster from short
prompts. Operators are rendered from the registry (``describe_operators``), never hand-typed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

COMPLETION_MARKER = "### Workflow\n"
"""Last line of every policy prompt; the completion (workflow code) follows it directly."""


def render_operators(operator_names: Iterable[str] | None = None, brief: bool = False) -> str:
    """Operators for ``operator_names``, straight from the registry.

    ``brief`` renders only the registered names (``ops.calculate, ops.mean, ...``), which keeps
    the policy prompt short for a small model; otherwise signatures with their descriptions.
    """
    from operators.registry import describe_operators, get_operators

    names = None if operator_names is None else list(operator_names)
    if brief:
        return ", ".join(f"ops.{op.name}" for op in get_operators(names).values())
    return describe_operators(names)


def render_policy_prompt(
    task_description: str,
    operators_text: str,
    problem: str,
    parent_code: str | None = None,
    failures: Sequence[str] | None = None,
) -> str:
    """Render the policy prompt.

    ``operators_text`` must come from :func:`render_operators` (the registry). ``parent_code``
    is the workflow the policy edits, if any; ``failures`` are short descriptions of problems
    the parent got wrong. The completion is a whole workflow program ending with EOS.
    """
    parts = [
        f"### Task\n{task_description.strip()}\n",
        f"### Operators\n{operators_text.strip()}\n",
        f"### Problem\n{problem.strip()}\n",
    ]
    if parent_code:
        parts.append(f"### Parent workflow\n{parent_code.strip()}\n")
    if failures:
        parts.append("### Failures\n" + "\n".join(f"- {f.strip()}" for f in failures) + "\n")
    parts.append(COMPLETION_MARKER)
    return "".join(parts)


def policy_prompt_for(
    task_description: str,
    operator_names: Iterable[str] | None,
    problem: str,
    parent_code: str | None = None,
    failures: Sequence[str] | None = None,
) -> str:
    """The policy prompt as every sampler and the learner build it (brief operator lines).

    Proposers that sample the policy must use this (or pass the same ``operators_text`` to
    :func:`render_policy_prompt`) so that training sees exactly the sampled prompt.
    """
    return render_policy_prompt(task_description, render_operators(operator_names, brief=True), problem,
                                parent_code, failures)
