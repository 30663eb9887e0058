"""``TrainConfig``: the one documented config of ``workflow-rl train`` (like TRL's ``GRPOConfig``).

Every field has help text (``metadata["help"]``, also used by the CLI); ``__post_init__``
validates and derives values, and its errors state the value and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from workflow_rl.errors import WorkflowRLError

SEARCH_SAMPLES = ("all", "positive", "contrast")
"""Which search samples training keeps (``search_samples`` of the train and loop configs and of the dataset)."""


def _f(default, help: str):  # noqa: A002 - "help" mirrors argparse/typer naming
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Hyper-parameters and data selection of one GRPO training round."""

    run: str = _f("", "Name of the stored search run whose evaluations are trained on.")
    policy: str = _f("builtin:tiny", "Policy to start from: builtin:tiny, a model directory, or a checkpoint path.")
    out_dir: str | None = _f(None, "Checkpoint directory (default: ./runs/<run>/checkpoints).")
    cache_dir: str | None = _f(None, "Where builtin:tiny is built and cached (default ~/.cache/workflow-rl).")
    round: int = _f(0, "Loop round these steps and the checkpoint are recorded under.")
    rounds: tuple[int, ...] | None = _f(None, "Workflow rounds to read samples from (default: all).")
    lora: bool = _f(False, "Train a LoRA adapter instead of all weights (reference = adapter disabled).")
    lora_r: int = _f(8, "LoRA rank.")
    lora_alpha: int = _f(16, "LoRA alpha.")
    lr: float = _f(1e-5, "AdamW learning rate (0 keeps every parameter bit-identical: the control run).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    warmup_steps: int = _f(0, "Linear warmup of the learning rate over this many optimizer steps.")
    max_grad_norm: float = _f(1.0, "Clip the global gradient norm to this value (0 disables clipping).")
    batch_size: int = _f(16, "Samples per optimizer step.")
    micro_batch_size: int = _f(8, "Samples per forward pass; batch_size / micro_batch_size = grad accumulation.")
    epochs: int = _f(1, "Passes over the dataset.")
    num_iterations: int = _f(1, "PPO epochs per batch (optimizer steps on the same batch).")
    max_steps: int | None = _f(None, "Stop after this many optimizer steps (default: epochs over the data).")
    adv_scale: str = _f("group", "Advantage scaling: group (r-mean)/std, batch (batch std) or none (Dr. GRPO).")
    adv_eps: float = _f(1e-4, "Added to the std when scaling advantages.")
    eps_low: float = _f(0.2, "Lower clip: ratios below 1 - eps_low are clipped for negative advantages.")
    eps_high: float = _f(0.28, "Upper clip: ratios above 1 + eps_high are clipped for positive advantages.")
    dual_clip: float | None = _f(None, "Dual-clip constant c > 1 bounding the loss of negative advantages.")
    agg: str = _f("token", "Loss aggregation: token (DAPO), sequence (GRPO) or constant (Dr. GRPO).")
    constant_norm: float | None = _f(None, "Per-sequence normaliser for agg=constant (default: max completion tokens).")
    beta: float = _f(0.0, "KL coefficient to the reference policy (0 = no reference pass).")
    kl_kind: str = _f("k3", "KL estimator: k1, k2 or k3.")
    tis_cap: float = _f(2.0, "Truncated importance sampling cap C in min(exp(old - behavior), C).")
    mask_truncated: bool = _f(False, "Mask completions that hit the token limit without EOS out of the loss.")
    max_completion_tokens: int = _f(512, "Samples with longer completions are dropped (counted), never cut.")
    min_group_size: int = _f(2, "Groups with fewer samples are dropped (a group of one has no baseline).")
    drop_zero_std: bool = _f(False, "Drop groups whose rewards are all equal (DAPO dynamic sampling).")
    group_by_prompt: bool = _f(True, "Policy samples of one prompt form their own group (False: one group per problem, "
                                     "search samples of the problem included).")
    search_samples: str = _f("all", "Which search samples are trained: 'all'; 'positive' (those whose reward beats their "
                                    "group's mean); 'contrast' (every sample of a search program that beats its group's mean "
                                    "on some problem: pushed up where it wins, down where it fails).")
    search_temperature: float = _f(1.0, "Temperature search samples (no behavior logprobs) are trained at.")
    allow_stale: bool = _f(False, "Accept policy samples drawn by another policy version than the start policy.")
    seed: int = _f(0, "Seed of sample order, init and everything random.")
    save_every: int | None = _f(None, "Also checkpoint every N optimizer steps (for --resume).")
    resume: bool = _f(False, "Continue bit-for-bit from the newest checkpoint of this run and round.")
    grad_accum: int = field(init=False, default=1, metadata={"help": "Derived: batch_size // micro_batch_size."})

    def __post_init__(self) -> None:
        """Validate values and derive ``grad_accum``; errors say the value and the fix."""
        if not self.run:
            raise WorkflowRLError("run is empty: pass --run NAME of a stored search run")
        if self.lr < 0:
            raise WorkflowRLError(f"lr={self.lr} is negative: use a learning rate >= 0 (0 = control run)")
        if self.min_group_size < 2:
            raise WorkflowRLError(
                f"min_group_size={self.min_group_size}: a group of 1 has advantage 0 (no baseline); use >= 2"
            )
        if self.search_temperature <= 0:
            raise WorkflowRLError(
                f"search_temperature={self.search_temperature}: RL needs sampling temperature > 0 "
                "(T = 0 is greedy and has no logprobs to train); use e.g. 1.0"
            )
        if self.batch_size < 1 or self.micro_batch_size < 1 or self.batch_size % self.micro_batch_size:
            raise WorkflowRLError(
                f"batch_size={self.batch_size} must be a positive multiple of micro_batch_size={self.micro_batch_size}"
            )
        for name in ("epochs", "num_iterations", "max_completion_tokens", "lora_r"):
            if getattr(self, name) < 1:
                raise WorkflowRLError(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise WorkflowRLError(f"max_steps={self.max_steps} must be >= 1 (or unset)")
        if not (0 <= self.eps_low < 1 and self.eps_high >= 0):
            raise WorkflowRLError(f"eps_low={self.eps_low} must be in [0, 1) and eps_high={self.eps_high} >= 0")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise WorkflowRLError(f"dual_clip={self.dual_clip} must be > 1 (or unset)")
        if self.tis_cap < 1:
            raise WorkflowRLError(f"tis_cap={self.tis_cap} must be >= 1 (weights above it are truncated)")
        if self.beta < 0:
            raise WorkflowRLError(f"beta={self.beta} is negative: use beta >= 0")
        choices = {"adv_scale": ("group", "batch", "none"), "agg": ("token", "sequence", "constant"),
                   "kl_kind": ("k1", "k2", "k3"), "search_samples": SEARCH_SAMPLES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise WorkflowRLError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.warmup_steps < 0 or self.max_grad_norm < 0:
            raise WorkflowRLError("warmup_steps and max_grad_norm must be >= 0")
        self.grad_accum = self.batch_size // self.micro_batch_size

    @classmethod
    def help_for(cls, name: str) -> str:
        """Help text of a field (used by the CLI so the two never drift)."""
        return next(f.metadata["help"] for f in fields(cls) if f.name == name)
