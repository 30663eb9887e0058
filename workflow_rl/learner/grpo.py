"""GRPO maths as small pure functions (no model, no I/O), unit-tested on hand-computed numbers.

Definitions follow TRL's ``GRPOTrainer`` so that a parity check agrees: ``agg="token"`` is TRL's
``"dapo"`` (sum over every active token of the batch / their count), ``"sequence"`` is ``"grpo"``
(per-sequence token mean, then batch mean) and ``"constant"`` is ``"dr_grpo"`` (sum / (B * L_max)).
KL ``k3`` is TRL's ``exp(ref - logp) - (ref - logp) - 1``, added per token as ``beta * kl`` (times the
ratio with ``kl_bias_correction``, TRL's ``use_bias_correction_kl``). The sampler-mismatch weights,
the off-policy sequence mask and the high-entropy token mask are in :mod:`workflow_rl.learner.grpo_is`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from workflow_rl.learner.grpo_options import AdvantageScale, Aggregation, KLKind, RatioLevel  # noqa: F401 (re-exported)
from workflow_rl.policy.logprobs import token_logprobs  # noqa: F401 (re-exported: part of the maths API)

# ---------------------------------------------------------------- logprobs and masks


def completion_mask(
    lengths: torch.Tensor | Sequence[int],
    max_len: int,
    truncated: torch.Tensor | Sequence[bool] | None = None,
    mask_truncated: bool = False,
) -> torch.Tensor:
    """Float mask ``[B, max_len]``: 1 for the first ``lengths[b]`` completion tokens, 0 after.

    Built from lengths, never from token values, so an EOS whose id equals the pad id stays in
    the loss. ``lengths`` include the EOS when one was sampled. With ``mask_truncated`` the rows
    flagged in ``truncated`` (hit ``max_new_tokens`` without EOS) are masked out entirely
    (DAPO's overlong filtering); otherwise they are trained on like any other completion.
    """
    lengths_t = torch.as_tensor(lengths, dtype=torch.long)
    if (lengths_t > max_len).any() or (lengths_t < 0).any():
        raise ValueError(f"lengths {lengths_t.tolist()} must lie in [0, {max_len}]")
    mask = (torch.arange(max_len)[None, :] < lengths_t[:, None]).float()
    if mask_truncated and truncated is not None:
        keep = ~torch.as_tensor(truncated, dtype=torch.bool)
        mask = mask * keep[:, None].float()
    return mask


# ---------------------------------------------------------------- advantages


def _group_index(group_ids: Sequence[Hashable] | torch.Tensor) -> torch.Tensor:
    keys = group_ids.tolist() if isinstance(group_ids, torch.Tensor) else list(group_ids)
    index: dict[Hashable, int] = {}
    return torch.tensor([index.setdefault(k, len(index)) for k in keys], dtype=torch.long)


def group_stats(
    rewards: torch.Tensor, group_ids: Sequence[Hashable] | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample group mean and group std (unbiased, as ``torch.std``; 0 for a group of one)."""
    rewards = rewards.double()
    gidx = _group_index(group_ids)
    n_groups = int(gidx.max()) + 1 if gidx.numel() else 0
    count = torch.zeros(n_groups, dtype=torch.double).index_add_(0, gidx, torch.ones_like(rewards))
    total = torch.zeros(n_groups, dtype=torch.double).index_add_(0, gidx, rewards)
    mean = total / count
    sq = torch.zeros(n_groups, dtype=torch.double).index_add_(0, gidx, (rewards - mean[gidx]) ** 2)
    std = torch.where(count > 1, (sq / (count - 1).clamp(min=1)).sqrt(), torch.zeros_like(sq))
    return mean[gidx], std[gidx]


def group_advantages(
    rewards: torch.Tensor,
    group_ids: Sequence[Hashable] | torch.Tensor,
    scale: AdvantageScale = "group",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Group-relative advantages ``(r - mean_g)`` divided by ``std_g + eps`` (``group``), by the
    batch std ``+ eps`` (``batch``) or not at all (``none``, Dr. GRPO). Returns float32 ``[B]``."""
    mean, std = group_stats(rewards, group_ids)
    centred = rewards.double() - mean
    if scale == "group":
        centred = centred / (std + eps)
    elif scale == "batch":
        batch_std = rewards.double().std() if rewards.numel() > 1 else torch.tensor(0.0, dtype=torch.double)
        centred = centred / (batch_std + eps)
    elif scale != "none":
        raise ValueError(f"unknown advantage scale {scale!r}; use group, batch or none")
    return centred.float()


def zero_std_fraction(rewards: torch.Tensor, group_ids: Sequence[Hashable] | torch.Tensor) -> float:
    """Fraction of groups whose rewards are all equal (they carry no GRPO signal)."""
    gidx = _group_index(group_ids)
    if gidx.numel() == 0:
        return 0.0
    _, std = group_stats(rewards, group_ids)
    n_groups = int(gidx.max()) + 1
    zero = torch.zeros(n_groups, dtype=torch.bool)
    zero[gidx] = std == 0
    return float(zero.float().mean())


# ---------------------------------------------------------------- KL and the loss


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: KLKind = "k3") -> torch.Tensor:
    """Per-token KL estimate of ``pi || ref`` from sampled tokens (Schulman's k1/k2/k3)."""
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.exp(-log_ratio) + log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {kind!r}; use k1, k2 or k3")


@dataclass(frozen=True)
class LossOutput:
    """Result of :func:`policy_loss`: the loss to backpropagate plus detached statistics."""

    loss: torch.Tensor
    policy_loss: torch.Tensor  # aggregated clipped objective without the KL term
    kl: torch.Tensor  # masked token-mean of the KL term as added to the loss (0 when no reference was given)
    clip_low: float  # fraction of active tokens clipped at 1 - eps_low (A < 0)
    clip_high: float  # fraction of active tokens clipped at 1 + eps_high (A > 0)
    ratio_mean: float  # over active tokens of the ratio the loss used (a sequence's ratio on each of its tokens)
    ratio_std: float


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    agg: Aggregation = "token",
    constant_norm: float | None = None,
    token_norm: float | None = None,
) -> torch.Tensor:
    """Reduce a ``[B, L]`` per-token loss to a scalar.

    ``token``: masked sum / active tokens (or / ``token_norm`` when given, e.g. the active tokens
    of the whole accumulated optimizer step); ``sequence``: mean over sequences of each one's
    token mean; ``constant``: masked sum / (B * ``constant_norm``), ``constant_norm`` defaulting
    to ``L`` (the max completion length), as Dr. GRPO.
    """
    masked = per_token * mask
    if agg == "token":
        denom = mask.sum().clamp(min=1.0) if token_norm is None else max(float(token_norm), 1.0)
        return masked.sum() / denom
    if agg == "sequence":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if agg == "constant":
        norm = float(per_token.shape[-1] if constant_norm is None else constant_norm)
        return masked.sum() / (per_token.shape[0] * norm)
    raise ValueError(f"unknown loss aggregation {agg!r}; use token, sequence or constant")


def sequence_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's sequence log-ratio ``[B, 1]``: the masked token mean of ``logp - old`` of each row.

    Its exponential is the length-normalised sequence likelihood ratio ``(pi / pi_old)^(1/|y|)``,
    which TRL uses for ``importance_sampling_level="sequence"`` (0 for a row without active tokens).
    """
    return ((logp - old_logp) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    delta: float | None = None,
    agg: Aggregation = "token",
    constant_norm: float | None = None,
    is_weights: torch.Tensor | None = None,
    per_token_kl: torch.Tensor | None = None,
    beta: float = 0.0,
    token_norm: float | None = None,
    level: RatioLevel = "token",
    kl_bias_correction: bool = False,
    sequence_keep: torch.Tensor | None = None,
    token_keep: torch.Tensor | None = None,
) -> LossOutput:
    """Clipped surrogate ``-min(r A, clip(r, 1-eps_low, 1+eps_high) A)`` per token, aggregated.

    ``logp``/``old_logp``/``mask``: ``[B, L]``; ``advantages``: ``[B]``. The ratio ``r`` is
    ``exp(logp - old)`` per token (``level="token"``) or one :func:`sequence_log_ratio` per row
    (``"sequence"``, GSPO). ``delta`` (TRL's two-sided clipping, INTELLECT-2) caps ``r`` at
    ``delta`` before the min, so a negative-advantage token's loss is at most ``-delta A``.
    Then, in TRL's order, the per-token loss is multiplied by ``sequence_keep`` (``[B]``, the
    off-policy mask), ``token_keep`` (``[B, L]``, the high-entropy mask) and ``is_weights``
    (sampler-mismatch weights, detached, ``[B, L]`` or ``[B, 1]``), and ``beta * kl`` is added,
    where ``kl = per_token_kl``, times ``r`` with ``kl_bias_correction``: the ratio makes the
    gradient of k3 the unbiased reverse-KL gradient ``r * log(pi / ref) * grad logp``, where plain
    k3 gives ``(1 - ref / pi) * grad logp`` (see docs/learner.md).
    """
    adv = advantages[:, None].to(logp.dtype)
    if level == "token":
        log_ratio = logp - old_logp.detach()
    elif level == "sequence":
        log_ratio = sequence_log_ratio(logp, old_logp.detach(), mask)
    else:
        raise ValueError(f"unknown importance sampling level {level!r}; use token or sequence")
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    capped = ratio
    if delta is not None:
        if delta <= 1.0:
            raise ValueError(f"delta must be > 1 (it caps the ratio), got {delta}")
        capped = torch.clamp(ratio, max=delta)
    # a sequence-level ratio is [B, 1]: broadcast it onto the row's tokens
    per_token = (-torch.min(capped * adv, clipped * adv)).expand_as(mask)
    if sequence_keep is not None:
        per_token = per_token * sequence_keep[:, None].to(per_token.dtype)
    if token_keep is not None:
        per_token = per_token * token_keep.to(per_token.dtype)
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    pg = aggregate(per_token, mask, agg, constant_norm, token_norm)
    kl_term = None
    if per_token_kl is not None:
        kl_term = per_token_kl * ratio if kl_bias_correction else per_token_kl
    if kl_term is not None and beta != 0.0:
        loss = aggregate(per_token + beta * kl_term, mask, agg, constant_norm, token_norm)
    else:
        loss = pg
    with torch.no_grad():
        active = mask.bool()
        n_active = max(int(active.sum()), 1)
        ratio_tok = ratio.detach().expand_as(mask)
        low = ((ratio_tok < 1.0 - eps_low) & (adv < 0) & active).sum().item() / n_active
        high = ((ratio_tok > 1.0 + eps_high) & (adv > 0) & active).sum().item() / n_active
        r = ratio_tok[active]
        kl = (kl_term * mask).sum() / mask.sum().clamp(min=1.0) if kl_term is not None else torch.zeros(())
        ratio_mean = float(r.mean()) if r.numel() else 1.0
        ratio_std = float(r.std()) if r.numel() > 1 else 0.0
    return LossOutput(loss, pg.detach(), kl.detach(), low, high, ratio_mean, ratio_std)
