"""``TrainConfig``: the one documented config of ``workflow-rl train`` (like TRL's ``GRPOConfig``).

Every field has help text (``metadata["help"]``, also used by the CLI); ``__post_init__``
validates and derives values, and its errors state the value and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import get_args

from search.config import help_field
from workflow_rl.errors import WorkflowRLError
from workflow_rl.learner.grpo_options import (
    IS_MODES,
    RATIO_LEVELS,
    AdvantageScale,
    Aggregation,
    ISMode,
    KLKind,
    RatioLevel,
    SearchSamples,
)

SEARCH_SAMPLES: tuple[str, ...] = get_args(SearchSamples)
"""Which search samples training keeps (``search_samples`` of the train and loop configs and of the dataset)."""


@dataclass
class TrainConfig:
    """Hyper-parameters and data selection of one GRPO training round."""

    run: str = help_field("", "Name of the stored search run whose evaluations are trained on.")
    policy: str = help_field("builtin:tiny", "Policy to start from: builtin:tiny, builtin:smollm2, a .gguf file, a model directory, or a checkpoint path.")
    out_dir: str | None = help_field(None, "Checkpoint directory (default: ./runs/<run>/checkpoints).")
    cache_dir: str | None = help_field(None, "Where GGUF bases are dequantized to (default: $WORKFLOW_RL_CACHE or ~/.cache/workflow-rl).")
    round: int = help_field(0, "Loop round these steps and the checkpoint are recorded under.")
    rounds: tuple[int, ...] | None = help_field(None, "Workflow rounds to read samples from (default: all).")
    lora: bool | None = help_field(None, "Train a LoRA adapter instead of all weights (reference = adapter disabled); "
                                 "default: LoRA for a pretrained base (builtin:smollm2, a GGUF, a model "
                                 "directory), all weights for builtin:tiny.")
    lora_r: int = help_field(8, "LoRA rank.")
    lora_alpha: int = help_field(16, "LoRA alpha.")
    lr: float = help_field(1e-5, "AdamW learning rate (0 keeps every parameter bit-identical: the control run).")
    weight_decay: float = help_field(0.0, "AdamW weight decay.")
    warmup_steps: int = help_field(0, "Linear warmup of the learning rate over this many optimizer steps.")
    max_grad_norm: float = help_field(1.0, "Clip the global gradient norm to this value (0 disables clipping).")
    batch_size: int = help_field(16, "Samples per optimizer step.")
    micro_batch_size: int = help_field(8, "Samples per forward pass; batch_size / micro_batch_size = grad accumulation.")
    epochs: int = help_field(1, "Passes over the dataset.")
    num_iterations: int = help_field(1, "PPO epochs per batch (optimizer steps on the same batch).")
    max_steps: int | None = help_field(None, "Stop after this many optimizer steps (default: epochs over the data).")
    adv_scale: AdvantageScale = help_field("group", "Advantage scaling: group (r-mean)/std, batch (batch std) or none (Dr. GRPO).")
    adv_eps: float = help_field(1e-4, "Added to the std when scaling advantages.")
    eps_low: float = help_field(0.2, "Lower clip: ratios below 1 - eps_low are clipped for negative advantages.")
    eps_high: float = help_field(0.28, "Upper clip: ratios above 1 + eps_high are clipped for positive advantages.")
    delta: float | None = help_field(None, "TRL's two-sided clipping (INTELLECT-2): the ratio is capped at delta > 1 + eps_high, "
                                   "so a negative-advantage token's loss is at most -delta * A (dual-clip PPO).")
    importance_sampling_level: RatioLevel = help_field(
        "token", "Ratio pi/pi_old per token ('token') or one per sequence, the exp of its token-mean log-ratio "
                 "('sequence', GSPO); clipping and the bias-corrected KL use it.")
    agg: Aggregation = help_field("token", "Loss aggregation: token (DAPO), sequence (GRPO) or constant (Dr. GRPO).")
    constant_norm: float | None = help_field(None, "Per-sequence normaliser for agg=constant (default: max completion tokens).")
    beta: float = help_field(0.0, "KL coefficient to the reference policy (0 = no reference pass).")
    kl_kind: KLKind = help_field("k3", "KL estimator: k1, k2 or k3.")
    use_bias_correction_kl: bool = help_field(
        True, "Multiply the KL term by the ratio pi/pi_old (TRL, DeepSeek-V3.2): its gradient is then the unbiased "
              "reverse-KL gradient; plain k3 in the loss gives the forward-KL one. No effect at beta = 0.")
    vllm_importance_sampling_correction: bool = help_field(
        True, "Weight policy samples by pi_old/pi_behavior to correct for the sampler/trainer mismatch "
              "(TRL's name; any sampler that recorded behavior logprobs, vLLM or ours).")
    vllm_importance_sampling_mode: ISMode = help_field(
        "token_truncate", "token_truncate (weights clamped per token, TIS), token_mask (tokens outside "
                          "[clip_min, clip_max] dropped), sequence_truncate / sequence_mask (one weight per sequence, "
                          "exp of the summed log-ratio, clamped or the sequence dropped; TRL's default is sequence_mask).")
    vllm_importance_sampling_clip_max: float | None = help_field(
        2.0, "Upper bound C_max of the mismatch weights (truncate: min(w, C_max); mask: w > C_max dropped). "
             "TRL's default is 3.0.")
    vllm_importance_sampling_clip_min: float | None = help_field(
        None, "Lower bound C_min of the mismatch weights (truncate: max(w, C_min); mask: w < C_min dropped).")
    off_policy_mask_threshold: float | None = help_field(
        None, "Drop negative-advantage sequences whose mean log(pi_behavior / pi) exceeds this (DeepSeek-V3.2's "
              "off-policy sequence mask, e.g. 0.5); unset = off.")
    top_entropy_quantile: float = help_field(
        1.0, "Train the policy term only on the top quantile of tokens by entropy, per micro-batch (Beyond the "
             "80/20 rule recommends 0.2; 1.0 keeps every token). The KL term keeps every token.")
    mask_truncated_completions: bool = help_field(
        False, "Mask completions that hit the token limit without EOS out of the loss (DAPO's overlong filtering).")
    max_completion_tokens: int = help_field(512, "Samples with longer completions are dropped (counted), never cut.")
    min_group_size: int = help_field(2, "Groups with fewer samples are dropped (a group of one has no baseline).")
    drop_zero_std: bool = help_field(False, "Drop groups whose rewards are all equal (DAPO dynamic sampling).")
    group_by_prompt: bool = help_field(True, "Policy samples of one prompt form their own group (False: one group per problem, "
                                     "search samples of the problem included).")
    search_samples: SearchSamples = help_field("all", "Which search samples are trained: 'all'; 'positive' (those whose reward beats their "
                                    "group's mean); 'contrast' (every sample of a search program that beats its group's mean "
                                    "on some problem: pushed up where it wins, down where it fails).")
    search_per_group: int | None = help_field(
        None, "At most this many search samples above their group's mean reward and this many below it, per group, "
              "after --search-samples: above, the highest reward and then the shortest (a wide search finds many "
              "variants of one right program); below (contrast/all), the programs right in the most other groups "
              "first. None = all.")
    search_temperature: float = help_field(1.0, "Temperature search samples (no behavior logprobs) are trained at.")
    batch_by_group: bool = help_field(
        False, "Fill each optimizer step with whole groups, in a random group order, instead of single samples in a "
               "random order (TRL's batches are whole groups too): the rows of one prompt then share its forward "
               "pass, which on a long chat prompt cuts a step's passes several-fold.")
    skip_frozen: bool = help_field(
        False, "With lr = 0 only: skip every forward/backward pass (they cannot change a weight) and save the start "
               "policy as the checkpoint, after the data and version checks; no train steps are recorded. A control "
               "run then costs no training time.")
    allow_stale: bool = help_field(False, "Accept policy samples drawn by another policy version than the start policy.")
    seed: int = help_field(0, "Seed of sample order, init and everything random.")
    save_every: int | None = help_field(None, "Also checkpoint every N optimizer steps (for --resume).")
    resume: bool = help_field(False, "Continue bit-for-bit from the newest checkpoint of this run and round.")
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
        if self.search_per_group is not None and self.search_per_group < 1:
            raise WorkflowRLError(f"search_per_group={self.search_per_group} must be >= 1 (or unset: keep them all)")
        if not (0 <= self.eps_low < 1 and self.eps_high >= 0):
            raise WorkflowRLError(f"eps_low={self.eps_low} must be in [0, 1) and eps_high={self.eps_high} >= 0")
        if self.delta is not None and self.delta <= 1 + self.eps_high:
            raise WorkflowRLError(f"delta={self.delta} must be > 1 + eps_high = {1 + self.eps_high} (below it, it "
                                  "also cuts positive advantages); unset it to turn it off")
        self._check_importance_sampling()
        if self.off_policy_mask_threshold is not None and self.off_policy_mask_threshold < 0:
            raise WorkflowRLError(f"off_policy_mask_threshold={self.off_policy_mask_threshold} must be >= 0 "
                                  "(a KL estimate; e.g. 0.5) or unset")
        if not 0.0 <= self.top_entropy_quantile <= 1.0:
            raise WorkflowRLError(f"top_entropy_quantile={self.top_entropy_quantile} must be in [0, 1] (1 = all tokens)")
        if self.beta < 0:
            raise WorkflowRLError(f"beta={self.beta} is negative: use beta >= 0")
        choices = {"adv_scale": get_args(AdvantageScale), "agg": get_args(Aggregation),
                   "kl_kind": get_args(KLKind), "search_samples": SEARCH_SAMPLES,
                   "importance_sampling_level": RATIO_LEVELS, "vllm_importance_sampling_mode": IS_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise WorkflowRLError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.warmup_steps < 0 or self.max_grad_norm < 0:
            raise WorkflowRLError("warmup_steps and max_grad_norm must be >= 0")
        self.grad_accum = self.batch_size // self.micro_batch_size

    def _check_importance_sampling(self) -> None:
        """The mismatch weights' bounds: C_min <= 1 <= C_max, so a sample whose sampler and trainer agree
        keeps weight 1 (a bound on the wrong side of 1 would reweight or drop every on-policy token)."""
        lo, hi = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        if hi is not None and hi < 1:
            raise WorkflowRLError(f"vllm_importance_sampling_clip_max={hi} must be >= 1 (or unset)")
        if lo is not None and not 0 <= lo <= 1:
            raise WorkflowRLError(f"vllm_importance_sampling_clip_min={lo} must be in [0, 1] (or unset)")
        if (self.vllm_importance_sampling_correction and self.vllm_importance_sampling_mode.endswith("_truncate")
                and lo is None and hi is None):
            raise WorkflowRLError(f"vllm_importance_sampling_mode={self.vllm_importance_sampling_mode!r} needs "
                                  "vllm_importance_sampling_clip_max or _clip_min; set one (e.g. clip_max 2.0)")

    @classmethod
    def help_for(cls, name: str) -> str:
        """Help text of a field (used by the CLI so the two never drift)."""
        return next(f.metadata["help"] for f in fields(cls) if f.name == name)
