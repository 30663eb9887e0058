"""Named sets of :class:`~workflow_rl.loop.config.LoopConfig` overrides (``workflow-rl loop --preset NAME``).

A preset only changes defaults: options given explicitly (on the command line, or as keyword
arguments of :meth:`LoopConfig.from_preset`) win over it. Its name is stored in the loop run's
config (``LoopConfig.preset``) with the values it set, so re-running the command resumes with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from workflow_rl.errors import WorkflowRLError


@dataclass(frozen=True)
class Preset:
    """One named set of loop settings."""

    name: str
    summary: str  # one line, shown by ``loop --help``
    values: MappingProxyType[str, Any]


SMOLLM2_CPU = Preset(
    "smollm2-cpu",
    "SmolLM2-135M-Instruct with LoRA, budgets sized for 2 CPU cores",
    MappingProxyType(dict(
        policy="builtin:smollm2",
        # Without it SmolLM2 wrote 0 valid programs in 16 on calc (no reward for GRPO to see): 16 LoRA
        # steps on answer-free random pipelines, fenced, cached on disk (workflow_rl/policy/warm_start.py).
        warm_start=16,
        # calc's per-problem chat prompt is ~730 tokens after the warm start (operators' signatures with
        # the first clause of their descriptions; 1,650 with whole descriptions): sampling and training
        # cost scale with prompt tokens x problems, so a round draws few problems.
        train_problems=16,
        group_size=8,  # GRPO group per problem: big enough that a reward can differ within it
        max_new_tokens=64,  # a calc program is ~30-50 tokens in the chat format's ```python fence
        search_budget=160,  # half the default: round >= 1's graft expansions each sample the policy
        children=4,
        # the search's per-problem programs join the policy's groups where they are right: the warm-started
        # base rarely samples the fitting pipeline itself (6 right of 128 samples on 16 problems, round 0)
        search_branches=64,
        graft_samples=8,  # per failing problem (+ the greedy one); the default 64 is sized for builtin:tiny
        lr=2e-4,  # LoRA (the default for a pretrained base): B starts at 0 and few steps run per round
        epochs=1,
        batch_size=16,
        # the system message (~700 tokens) runs once per forward, each problem's tail (~30) and its
        # samples after it (workflow_rl/policy/decode.py): a micro-batch of a whole step costs little more
        micro_batch_size=16,
    )),
)
"""``--preset smollm2-cpu``: the closed loop on calc with ``builtin:smollm2`` on a 2-core CPU machine.

Sized for 2 shared CPU cores (no GPU): a 16-step format warm start of the base (once per machine,
cached: 1,501 s at load 6-7; without it SmolLM2 writes no valid program, see
workflow_rl/policy/warm_start.py), 16 train problems x 8 samples of at most 64 new tokens, a
160-evaluation search whose first 64 distinct branches also run on the train problems (right ones
join the groups), 8 graft samples per failing problem, one epoch in micro-batches of 16.
The warm-started base is asked calc's prompt with short operator lines (~730 tokens instead of
~1650), and the system message runs once per sampling or training call, not once per problem.
It is still far slower per round than ``builtin:tiny``: ``benchmarks/bench_learning.py --policy
builtin:smollm2`` runs this preset with a search of 400 and lr 5e-4, and takes ~25 minutes per seed
for a loop and its lr = 0 control with their evaluations.
LoRA is the learner's default for a pretrained base; its lr (2e-4) is twice the full fine-tuning
default because the adapter starts at zero and a round makes few optimizer steps (a choice, not yet
tuned by a learning benchmark). Children stay ``auto``: graft on calc, whose operators are all
tools, so the policy is asked the per-problem prompt it is trained on (rewrite would ask it the
expansion prompt, which the learner never trains; see docs/loop.md).
"""

PRESETS: dict[str, Preset] = {p.name: p for p in (SMOLLM2_CPU,)}
"""Every preset by name."""


def preset_values(name: str) -> dict[str, Any]:
    """The overrides of preset ``name``; an unknown name raises with the known ones listed."""
    if name not in PRESETS:
        raise WorkflowRLError(f"preset={name!r} is unknown; use one of: {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name].values)


def presets_help() -> str:
    """One line per preset for ``--help``."""
    return "; ".join(f"{p.name}: {p.summary}" for p in PRESETS.values())
