"""Which tokens and sequences the GRPO loss trusts: pure functions, unit-tested on hand-computed numbers.

Three corrections from the field, each TRL 1.16's formula under TRL's option name:

- :func:`sampler_is_weights`: importance weights for the sampler/trainer mismatch (docs/design.md rule 5),
  ``pi_old / pi_behavior`` per token or per sequence, truncated or masked outside ``[C_min, C_max]``
  (``vllm_importance_sampling_mode``; the name is TRL's, the weights apply to any sampler that
  recorded behavior logprobs).
- :func:`off_policy_mask`: DeepSeek-V3.2's off-policy sequence mask (``off_policy_mask_threshold``):
  a negative-advantage sequence whose mean ``log pi_behavior - log pi`` exceeds the threshold is
  dropped from the policy term.
- :func:`high_entropy_mask`: "Beyond the 80/20 rule" (``top_entropy_quantile``): only the tokens in
  the top quantile of entropy carry policy gradient.

Each returns a mask or weights that :func:`workflow_rl.learner.grpo.policy_loss` multiplies into the
per-token policy loss (never into the KL term), and :func:`mask_stats` counts what each masked for
the per-step metrics.
"""

from __future__ import annotations

import math

import torch

from workflow_rl.learner.grpo import sequence_log_ratio
from workflow_rl.learner.grpo_options import IS_MODES, ISMode


def sampler_is_weights(
    old_logp: torch.Tensor,
    behavior_logp: torch.Tensor,
    mask: torch.Tensor,
    mode: ISMode = "token_truncate",
    clip_max: float | None = 2.0,
    clip_min: float | None = None,
    has_behavior: torch.Tensor | None = None,
) -> torch.Tensor:
    """Detached importance weights ``[B, L]`` correcting for the sampler/trainer mismatch.

    ``old_logp``/``behavior_logp``/``mask``: ``[B, L]`` (trainer's logprobs of the data-producing
    policy, the sampler's, the completion mask). The log-ratio ``(old - behavior) * mask`` is taken
    per token (``token_*``) or summed over the row (``sequence_*``: one weight ``exp(sum)`` for the
    whole sequence, as TRL; a sum, not GSPO's mean). ``*_truncate`` clamps the weight to
    ``[clip_min, clip_max]``; ``*_mask`` sets it to 0 outside that range (the token or sequence
    leaves the policy term). A ``None`` bound is open. Rows where ``has_behavior`` is False
    (search samples, no sampler logprobs) get weight 1.
    """
    if mode not in IS_MODES:
        raise ValueError(f"unknown importance sampling mode {mode!r}; use one of {', '.join(IS_MODES)}")
    diff = (old_logp.detach() - behavior_logp.detach()) * mask
    if mode.startswith("sequence_"):
        diff = diff.sum(-1, keepdim=True)
    weights = torch.exp(diff)
    if mode.endswith("_truncate"):
        if clip_min is None and clip_max is None:
            raise ValueError(f"{mode} needs clip_min or clip_max")
        weights = torch.clamp(weights, min=clip_min, max=clip_max)
    else:  # *_mask
        low = -math.inf if clip_min is None else clip_min
        high = math.inf if clip_max is None else clip_max
        weights = weights.masked_fill((weights < low) | (weights > high), 0.0)
    weights = weights.expand_as(mask)
    if has_behavior is not None:
        weights = torch.where(has_behavior[:, None].bool(), weights, torch.ones_like(weights))
    return weights


def off_policy_mask(
    advantages: torch.Tensor,
    logp: torch.Tensor,
    sampling_logp: torch.Tensor,
    mask: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """DeepSeek-V3.2's off-policy sequence mask ``[B]``: 1 keeps a sequence, 0 drops it.

    A sequence is dropped when its advantage is negative and its mean
    ``sampling_logp - logp`` over active tokens (a KL estimate of the sampler from the current
    policy) exceeds ``threshold``: pushing down a sample the policy has already moved away from
    mostly adds noise. ``sampling_logp`` is the sampler's logprobs (``old`` for rows without them).
    """
    mean_kl = sequence_log_ratio(sampling_logp.detach(), logp.detach(), mask).squeeze(-1)
    keep = (advantages >= 0) | (mean_kl <= threshold)
    return keep.to(mask.dtype)


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """Bool ``[B, L]``: the active tokens whose entropy is in the top ``quantile`` of the active ones.

    The cut is ``torch.quantile(entropy[active], 1 - quantile)`` (linear interpolation, as TRL), and
    a token is kept when its entropy is ``>=`` the cut: ``quantile=1`` keeps every token, ``0`` only
    the highest-entropy one(s). No active token: nothing is kept.
    """
    active = mask.bool()
    values = entropy.detach()[active].float()
    if values.numel() == 0:
        return torch.zeros_like(active)
    cut = torch.quantile(values, 1.0 - quantile)
    return (entropy.detach() >= cut) & active  # inactive positions are dropped by `active`


def mask_stats(keep: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[float, float, int]:
    """``(masked token count, masked sequence count, sequences)`` of a keep mask or weights.

    ``keep``: ``[B, L]`` (0 = masked) over the active tokens of ``mask``; a sequence counts as
    masked when every one of its active tokens is. ``rows`` (bool ``[B]``) restricts the count to
    some rows (e.g. those with behavior logprobs); rows without active tokens are not counted.
    """
    active = mask.bool()
    if rows is not None:
        active = active & rows[:, None].bool()
    masked = (keep == 0) & active
    has_tokens = active.any(-1)
    masked_rows = (masked.sum(-1) == active.sum(-1)) & has_tokens
    return float(masked.sum()), float(masked_rows.sum()), int(has_tokens.sum())
