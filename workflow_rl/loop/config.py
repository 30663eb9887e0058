"""``LoopConfig``: the one documented config of ``workflow-rl loop`` (like TRL's ``GRPOConfig``).

Every field has help text (``metadata["help"]``, also used by the CLI); ``__post_init__``
validates, and its errors state the value and the fix. Defaults are sized so that
``workflow-rl loop --rounds 2`` on ``calc`` finishes in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from search.config import help_field
from workflow_rl.errors import WorkflowRLError
from workflow_rl.learner.config import SEARCH_SAMPLES, TrainConfig
from workflow_rl.learner.grpo_options import SearchSamples
from workflow_rl.loop.presets import PRESETS, preset_values

PolicyChildren = Literal["auto", "graft", "rewrite"]
"""How the policy writes search children from round 1 on (see ``LoopConfig.policy_children``)."""

SelectPolicy = Literal["last", "validation"]
"""Which round's checkpoint a loop reports as its policy (see ``LoopConfig.select_policy``)."""


@dataclass
class LoopConfig:
    """Settings of the closed loop: search -> train -> policy-steered search -> train ..."""

    preset: str | None = help_field(None, "Named set of defaults this config was built from (see "
                                     "workflow_rl/loop/presets.py); stored, so a resumed loop keeps it.")
    run: str = help_field("loop", "Name of the loop; round r's search run is <run>/r<r>.")
    benchmark: str = help_field("calc", "Benchmark (validation drives search, train feeds the learner).")
    rounds: int = help_field(3, "Rounds; each = one search + one training round (round 0 searches with mutations).")
    policy: str = help_field("builtin:tiny", "Starting policy: builtin:tiny, builtin:smollm2, a .gguf file, a model directory or a checkpoint path.")
    warm_start: int = help_field(0, "Steps of the supervised format warm start of a pretrained chat base before round 0 "
                                 "(random answer-free programs of the benchmark's operators, fenced, on random train "
                                 "problems; cached on disk, see workflow_rl/policy/warm_start.py); 0 = none. "
                                 "builtin:tiny has its own and ignores this.")
    seed: int = help_field(0, "Seed of search, sampling, problem choice and training.")
    search_budget: int = help_field(320, "Evaluation budget of each round's search (workflow x problem executions).")
    search_batch: int = help_field(20, "Validation problems per expansion.")
    children: int = help_field(4, "G: children per expansion (a policy expansion is one GRPO group).")
    selection: str = help_field("puct", "Node selection of every round (uct, puct, aflow, random).")
    policy_children: PolicyChildren = help_field(
        "auto", "How the policy writes search children from round 1 on: 'graft' (it writes per-problem "
        "programs for the parent's failures, as trained; those verified on their failure with tool operators "
        "become routing branches of the parent), 'rewrite' (it rewrites the parent from the expansion prompt; "
        "each child is an exact policy sample, one GRPO group) or 'auto' (graft when every operator of the "
        "benchmark is a tool, so a branch can be checked without LLM calls; else rewrite).")
    graft_samples: int = help_field(64, "Graft mode: programs the policy samples per failing problem of an expanded "
                             "node (plus its greedy one); the verified ones are shared by the children.")
    graft_failures: int = help_field(6, "Graft mode: failing validation problems of an expanded node the policy writes "
                             "programs for: the search's sample of 6 (what mutations see) first, then its other "
                             "failures. More cost sampling time, not evaluations.")
    mutation_fraction: float = help_field(0.25, "Share of child slots given to mutations in policy-steered rounds (all of them "
                                  "where the policy proposes nothing).")
    train_problems: int = help_field(128, "Train problems drawn per round for the learner's samples.")
    group_size: int = help_field(16, "Policy samples per train problem (one GRPO group per problem; rewards are sparse at "
                             "first, so a bigger group is likelier to hold a success).")
    top_workflows: int = help_field(0, "Best search workflows (by validation score) run on the round's train problems "
                              "(0 = pure on-policy GRPO; search positives in a policy group swamp it).")
    search_branches: int = help_field(0, "Distinct straight-line branches of the round's search workflows (best first, in "
                                 "canonical form) run on its train problems; each joins the policy's group of its problem "
                                 "as a per-problem search sample (0 = none: on calc with builtin:tiny it did not raise "
                                 "test accuracy, see docs/experiments/2026-11-22-closed-loop.md).")
    search_samples: SearchSamples = help_field("positive", "With search_branches > 0: which of the round's search samples are trained "
                                         "('positive', 'contrast' or 'all'; see train --help).")
    explore_budget: int = help_field(0, "With search_branches > 0: evaluation budget of a further mutation-only search each "
                                 "round (run <loop>/r<r>/explore, not part of the round's search curve) whose branches "
                                 "follow the round's own as candidates; mutations call no model, so a wide one is cheap "
                                 "on tool-only benchmarks and finds right programs for more kinds of problem (0 = none).")
    search_per_group: int = help_field(0, "With search_branches > 0: at most this many search samples above a GRPO group's "
                                       "mean and this many below it, the right and shortest first, and, below, the "
                                       "programs right in the most other groups (0 = all; see train --search-per-group).")
    extra_workflows: int = help_field(0, "Further random search workflows run on them (contrast for the advantages).")
    batch_by_group: bool = help_field(False, "Fill each optimizer step with whole GRPO groups (see train --batch-by-group): "
                                      "cheaper steps on a long shared prompt.")
    temperature: float = help_field(1.0, "Sampling temperature of the policy (training uses the same T).")
    max_new_tokens: int = help_field(80, "Longest completion the policy may sample.")
    lr: float = help_field(1e-4, "Learner learning rate (0 = the control loop: parameters stay bit-identical).")
    select_policy: SelectPolicy = help_field(
        "last", "Which round's checkpoint is the loop's policy: 'last', or 'validation': each round's checkpoint "
                "writes one greedy program per validation problem (~1 min on SmolLM2 on 2 cores) and the best score "
                "wins, the later round on ties. Training always continues from the last checkpoint.")
    skip_frozen: bool = help_field(False, "With lr = 0 (the control loop): skip the learner's passes, which cannot change a "
                                   "weight, and keep the start policy as each round's checkpoint (see train --skip-frozen).")
    beta: float = help_field(0.0, "KL coefficient (k3) to the policy each round's training starts from (0 = no reference pass).")
    epochs: int = help_field(2, "Learner passes over each round's samples.")
    drop_zero_std: bool = help_field(True, "Train only on groups whose rewards differ (DAPO dynamic sampling): an "
                                   "all-equal group has zero advantage and would only cost compute.")
    batch_size: int = help_field(32, "Samples per optimizer step.")
    micro_batch_size: int = help_field(16, "Samples per forward pass.")
    out_dir: str | None = help_field(None, "Where checkpoints go (default ./runs/<run>).")
    cache_dir: str | None = help_field(None, "Where GGUF bases are dequantized to (default: $WORKFLOW_RL_CACHE or ~/.cache/workflow-rl).")
    workers: int | None = help_field(None, "Sandbox worker processes (default: CPU count).")

    def __post_init__(self) -> None:
        """Validate; errors say the value and the fix."""
        if not self.run or "/" in self.run:
            raise WorkflowRLError(f"run={self.run!r}: use a non-empty name without '/' (round runs add /r<N>)")
        if self.preset is not None and self.preset not in PRESETS:
            preset_values(self.preset)  # raises, naming the known presets
        if self.policy_children not in get_args(PolicyChildren):
            raise WorkflowRLError(f"policy_children={self.policy_children!r}: use 'auto', 'graft' or 'rewrite'")
        if self.warm_start < 0:
            raise WorkflowRLError(f"warm_start={self.warm_start} must be >= 0 (0 = no warm start)")
        for name in ("rounds", "graft_samples", "graft_failures", "search_budget", "search_batch", "children", "train_problems",
                     "group_size", "max_new_tokens", "epochs", "batch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise WorkflowRLError(f"{name}={getattr(self, name)} must be >= 1")
        if self.group_size < 2:
            raise WorkflowRLError(f"group_size={self.group_size}: a GRPO group needs >= 2 samples")
        if self.select_policy not in get_args(SelectPolicy):
            raise WorkflowRLError(f"select_policy={self.select_policy!r}: use 'last' or 'validation'")
        if self.search_samples not in SEARCH_SAMPLES:
            raise WorkflowRLError(f"search_samples={self.search_samples!r}: use 'positive', 'contrast' or 'all'")
        if min(self.top_workflows, self.extra_workflows, self.search_branches, self.explore_budget,
               self.search_per_group) < 0:
            raise WorkflowRLError("top_workflows, extra_workflows, search_branches, explore_budget and "
                                  "search_per_group must be >= 0")
        if not self.search_branches:
            for name in ("explore_budget", "search_per_group"):
                if getattr(self, name):  # both only shape search samples, which need search branches
                    raise WorkflowRLError(f"{name}={getattr(self, name)} does nothing without search branches: "
                                          f"set search_branches > 0 (e.g. --search-branches 256) or {name}=0")
        if not 0.0 <= self.mutation_fraction <= 1.0:
            raise WorkflowRLError(f"mutation_fraction={self.mutation_fraction} must be in [0, 1]")
        if self.temperature <= 0:
            raise WorkflowRLError(f"temperature={self.temperature}: RL sampling needs T > 0 (e.g. 1.0)")
        if self.lr < 0:
            raise WorkflowRLError(f"lr={self.lr} is negative: use >= 0 (0 = control loop)")
        if self.batch_size % self.micro_batch_size:
            raise WorkflowRLError(
                f"batch_size={self.batch_size} must be a multiple of micro_batch_size={self.micro_batch_size}"
            )

    @classmethod
    def from_preset(cls, preset: str | None, **explicit: Any) -> LoopConfig:
        """The config of preset ``preset`` (None = the plain defaults); ``explicit`` values win over it."""
        values = preset_values(preset) if preset is not None else {}
        return cls(**{**values, **explicit, "preset": preset})

    def train_config(self, run: str, policy: str, out_dir: str, round_: int) -> TrainConfig:
        """The learner's config for round ``round_``: trains search run ``run`` from ``policy`` into ``out_dir``.

        The loop's learner settings carry over by name; the round offsets the seed, the sampling
        temperature is the one the policy sampled at, and search samples are grouped per problem
        (and filtered) only when the round adds search branches.
        """
        return TrainConfig(
            run=run, policy=policy, out_dir=out_dir, cache_dir=self.cache_dir, round=round_, lr=self.lr,
            epochs=self.epochs, batch_size=self.batch_size, micro_batch_size=self.micro_batch_size,
            seed=self.seed + round_, search_temperature=self.temperature, drop_zero_std=self.drop_zero_std,
            beta=self.beta, group_by_prompt=not self.search_branches,
            search_samples=self.search_samples if self.search_branches else "all",
            search_per_group=(self.search_per_group or None) if self.search_branches else None,
            batch_by_group=self.batch_by_group, skip_frozen=self.skip_frozen,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (stored in ``runs.config`` of the loop run)."""
        return asdict(self)

    @staticmethod
    def help(name: str) -> str:
        """Help text of one field (CLI options use it)."""
        return next(f.metadata["help"] for f in fields(LoopConfig) if f.name == name)
