"""Names of the learner's objective options, shared by the maths and the config without importing torch
(the CLI builds its help from ``TrainConfig`` and must start fast)."""

from __future__ import annotations

from typing import Literal, get_args

RatioLevel = Literal["token", "sequence"]
"""``importance_sampling_level``: the ratio pi/pi_old per token, or one per sequence (GSPO)."""

ISMode = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
"""``vllm_importance_sampling_mode``: how the sampler-mismatch weights pi_old/pi_behavior are bounded."""

AdvantageScale = Literal["group", "batch", "none"]
"""``adv_scale``: advantages scaled by the group's std, the batch's std, or not at all (Dr. GRPO)."""

Aggregation = Literal["token", "sequence", "constant"]
"""``agg``: the loss averaged over tokens (DAPO), per sequence then over sequences (GRPO), or a constant (Dr. GRPO)."""

KLKind = Literal["k1", "k2", "k3"]
"""``kl_kind``: the KL estimator."""

SearchSamples = Literal["all", "positive", "contrast"]
"""``search_samples``: which search samples training keeps."""

RATIO_LEVELS: tuple[str, ...] = get_args(RatioLevel)
IS_MODES: tuple[str, ...] = get_args(ISMode)
