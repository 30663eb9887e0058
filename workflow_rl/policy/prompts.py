"""The policy prompt, shared by sampling and training (docs/design.md, one round, step 2).

:func:`render_policy_prompt` is the plain prompt of ``builtin:tiny``: short on purpose (the tiny
model has a small context and learns faster from short prompts). A model whose tokenizer has a
chat template gets a chat prompt instead (:mod:`workflow_rl.policy.formats`, which picks the one
of a policy); both render operators from the registry (``describe_operators``), never hand-typed,
from one :class:`PromptSpec`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class PromptSpec:
    """Benchmark text every policy prompt of a run is rendered from.

    ``example`` is a seed workflow of the benchmark: the chat prompt's worked example (the plain
    prompt of ``builtin:tiny`` has none). Build it with :meth:`of` / :meth:`for_benchmark` so
    sampling and training render the same example.
    """

    task_description: str
    operator_names: tuple[str, ...] | None
    example: str | None = None

    @classmethod
    def of(cls, bench) -> PromptSpec:
        """The spec of a benchmark object: its description, operators and first seed workflow."""
        seeds = bench.seed_workflows()
        return cls(bench.description, tuple(bench.operator_names), next(iter(seeds.values()), None))

    @classmethod
    def for_benchmark(cls, name: str) -> PromptSpec:
        """The spec of a registered benchmark (a :class:`WorkflowRLError` when it is not registered)."""
        from workflow_rl.errors import WorkflowRLError

        try:
            from workflow_rl.tasks import get_benchmark

            bench = get_benchmark(name)
        except (ImportError, KeyError, LookupError, ValueError) as exc:
            raise WorkflowRLError(f"benchmark {name!r} of the run is not registered ({exc})") from exc
        return cls.of(bench)

    @classmethod
    def for_context(cls, context) -> PromptSpec:
        """The spec of a search expansion (a ``search.base.ProposalContext``): its task and operators,
        and the first seed workflow of its benchmark when that is registered (none otherwise)."""
        try:
            from workflow_rl.tasks import get_benchmark

            seeds = get_benchmark(context.benchmark).seed_workflows()
        except (ImportError, KeyError, LookupError, ValueError):
            seeds = {}
        return cls(context.task_description, tuple(context.operator_names), next(iter(seeds.values()), None))

    def render(self, problem_text: str, fmt=None) -> str:
        """The policy prompt for one problem (no parent) in ``fmt``, a policy's ``format`` (default:
        the plain prompt; a chat policy's prompt needs its format, or ``Policy.prompt``)."""
        if fmt is None:
            return policy_prompt_for(self.task_description, self.operator_names, problem_text)
        return fmt.prompt(self, problem_text)
