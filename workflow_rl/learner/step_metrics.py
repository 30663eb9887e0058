"""Per-step metrics of the GRPO learner (docs/design.md rule 10), accumulated over the micro-batches of one step.

Kept apart from :mod:`workflow_rl.learner.trainer` so the step reads as the maths: the trainer hands each
micro-batch's tensors to :meth:`StepMetrics.add` and turns them into the stored metrics with
:meth:`StepMetrics.summary`. Fractions are over active tokens or over sequences with active tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workflow_rl.learner.grpo import LossOutput, sequence_log_ratio
from workflow_rl.learner.grpo_is import mask_stats


@dataclass
class StepMetrics:
    """Running sums and value lists of one optimizer step."""

    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("loss/policy", "loss/kl", "clip/low", "clip/high", "entropy", "tokens/active", "seqs", "is_masked_tokens",
         "is_masked_seqs", "is_seqs", "off_policy_masked", "entropy_kept"), 0.0))
    ratios: list[torch.Tensor] = field(default_factory=list)
    seq_ratios: list[torch.Tensor] = field(default_factory=list)
    gaps: list[torch.Tensor] = field(default_factory=list)
    weights: list[torch.Tensor] = field(default_factory=list)

    def add(self, out: LossOutput, scale: float, logp: torch.Tensor, old: torch.Tensor, behavior: torch.Tensor,
            mask: torch.Tensor, entropy: torch.Tensor, has_behavior: torch.Tensor, is_weights: torch.Tensor | None,
            sequence_keep: torch.Tensor | None, token_keep: torch.Tensor | None) -> None:
        """Add one micro-batch: its loss output (``scale`` = its share of a per-micro-batch mean) and the
        ``[B, L]`` tensors the loss saw (IS weights, off-policy and entropy masks: None when off)."""
        t = self.totals
        active = mask.bool()
        n_active = float(active.sum())
        t["loss/policy"] += float(out.policy_loss) * scale
        t["loss/kl"] += float(out.kl) * n_active
        t["clip/low"] += out.clip_low * n_active
        t["clip/high"] += out.clip_high * n_active
        t["entropy"] += float((entropy.float() * mask).sum())
        t["tokens/active"] += n_active
        logp = logp.detach()
        self.ratios.append(torch.exp(logp - old)[active])
        has_tokens = active.any(-1)
        # GSPO's sequence ratio exp(mean_t log pi/pi_old), logged whichever level the loss uses
        self.seq_ratios.append(torch.exp(sequence_log_ratio(logp, old, mask)).squeeze(-1)[has_tokens])
        t["seqs"] += float(has_tokens.sum())
        policy_tokens = active & has_behavior[:, None]
        self.gaps.append((old - behavior).abs()[policy_tokens])
        if is_weights is not None:
            self.weights.append(is_weights[policy_tokens])
            masked_tokens, masked_seqs, n_seqs = mask_stats(is_weights, mask, has_behavior)
            t["is_masked_tokens"] += masked_tokens
            t["is_masked_seqs"] += masked_seqs
            t["is_seqs"] += n_seqs
        if sequence_keep is not None:
            t["off_policy_masked"] += float(((sequence_keep == 0) & has_tokens).sum())
        t["entropy_kept"] += float(token_keep.sum()) if token_keep is not None else n_active

    def summary(self) -> dict[str, float]:
        """The step's metrics (without grad norm, lr and skip flag, which the optimizer step adds)."""
        t = self.totals
        n_tok = max(t["tokens/active"], 1.0)
        ratio = torch.cat(self.ratios) if self.ratios else torch.ones(1)
        seq_ratio = torch.cat(self.seq_ratios) if self.seq_ratios else torch.ones(1)
        gap = torch.cat(self.gaps) if self.gaps else torch.zeros(0)
        weight = torch.cat(self.weights) if self.weights else torch.zeros(0)
        return {
            "loss/policy": t["loss/policy"], "loss/kl": t["loss/kl"] / n_tok,
            "ratio/mean": float(ratio.mean()), "ratio/std": float(ratio.std()) if ratio.numel() > 1 else 0.0,
            "ratio/seq_mean": float(seq_ratio.mean()),
            "ratio/seq_std": float(seq_ratio.std()) if seq_ratio.numel() > 1 else 0.0,
            "ratio/seq_min": float(seq_ratio.min()), "ratio/seq_max": float(seq_ratio.max()),
            "clip/low": t["clip/low"] / n_tok, "clip/high": t["clip/high"] / n_tok,
            "mismatch/old_behavior_abs_mean": float(gap.mean()) if gap.numel() else 0.0,
            "mismatch/old_behavior_abs_max": float(gap.max()) if gap.numel() else 0.0,
            "is/weight_mean": float(weight.mean()) if weight.numel() else 1.0,
            "is/weight_min": float(weight.min()) if weight.numel() else 1.0,
            "is/weight_max": float(weight.max()) if weight.numel() else 1.0,
            "is/masked_token_frac": t["is_masked_tokens"] / weight.numel() if weight.numel() else 0.0,
            "is/masked_seq_frac": t["is_masked_seqs"] / t["is_seqs"] if t["is_seqs"] else 0.0,
            "off_policy/masked_seq_frac": t["off_policy_masked"] / max(t["seqs"], 1.0),
            "entropy/kept_token_frac": t["entropy_kept"] / n_tok if t["tokens/active"] else 1.0,
            "tokens/active": t["tokens/active"], "entropy": t["entropy"] / n_tok,
        }
