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
        # the first clause of their descriptions; 1,650 with whole descriptions). The system message runs
        # once per call, each problem's ~26-token tail and its samples after it, so the cost is in rows.
        train_problems=32,
        group_size=4,  # on-policy rows per problem: round >= 1's wrong samples are the push away from a collapse
        max_new_tokens=64,  # a calc program is ~30-50 tokens in the chat format's ```python fence
        search_budget=160,  # half the default: round >= 1's graft expansions each sample the policy
        children=4,
        # The search's per-problem programs join the policy's groups where they are right: the warm-started
        # base rarely samples the fitting pipeline itself (0-6 right of 128 samples, round 0). The round's
        # own search keeps ~10-20 workflows; a 20,000-evaluation mutation search (~50 s, no model call)
        # found a right branch for 28 of 32 train problems in round 0 and all 32 in round 1.
        search_branches=256,
        explore_budget=20000,
        search_per_group=2,  # of dozens of right variants, the two shortest
        graft_samples=8,  # per failing problem (+ the greedy one); the default 64 is sized for builtin:tiny
        # The policy writes for up to 20 of a node's failures (a 20-problem batch: all of them), not the
        # search's sample of 6: re-running round 1 from stored round-0 checkpoints, the trained policy's
        # search reached round 0's best after 80 / 60 / 340 evaluations (6: >400 / 60 / >400), seeds 0-2
        # (benchmarks/bench_steering.py). Each graft expansion samples more rows (~2x the round's search).
        graft_failures=20,
        # LoRA (the default for a pretrained base): B starts at 0. Seed-0 pilots, greedy on 16 test problems
        # after rounds 0 / 1: 5e-4 and 2 epochs 0.312 / 0.375 (the majority recipe, then a few others);
        # 1e-3, 3 epochs and 2 samples a problem 0.312 / 0.000 (one junk program everywhere). Round 0
        # retrained with 4 epochs: 0.250 validation (2 epochs: 0.233), the only setting tried whose greedy
        # programs start with other first lines than arith's; the recipe choice is learned late
        # (docs/experiments/2026-12-07-smollm2-round0.md), so a round gets twice the passes (~1.6x its training).
        lr=5e-4,
        epochs=4,
        batch_size=16,
        micro_batch_size=16,  # one forward per step: the system message runs once per forward
        batch_by_group=True,  # a step's rows share their prompts' passes (~17 s a step of 16 rows)
        # A seed-0 pilot's greedy test accuracy went 0.312 / 0.375 / 0.500 / 0.188 over four rounds: the
        # loop's policy is the round whose checkpoint is best greedy on validation (~1 min a round).
        select_policy="validation",
    )),
)
"""``--preset smollm2-cpu``: the closed loop on calc with ``builtin:smollm2`` on a 2-core CPU machine.

Sized for 2 shared CPU cores (no GPU): a 16-step format warm start of the base (once per machine,
cached: 1,501 s at load 6-7; without it SmolLM2 writes no valid program, see
workflow_rl/policy/warm_start.py), 32 train problems x 4 policy samples of at most 64 new tokens, a
160-evaluation search plus a 20,000-evaluation mutation-only exploration whose first 256 distinct
branches run on the train problems (the two shortest right ones join each problem's group), 8 graft
samples per failing problem for up to 20 of a node's failures, four epochs of 16-row steps made of whole groups at lr 5e-4 (LoRA); the
loop's policy is the round's checkpoint with the best greedy validation accuracy.
The warm-started base is asked calc's prompt with short operator lines (~730 tokens instead of
~1650), and the system message runs once per sampling or training call, not once per problem.
It is still far slower per round than ``builtin:tiny``: ``benchmarks/bench_learning.py --policy
builtin:smollm2`` runs this preset with 3 rounds, a search of 400 and 4 graft samples; what it
measured is in benchmarks/README.md. Children stay ``auto``: graft on calc, whose operators are all
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
