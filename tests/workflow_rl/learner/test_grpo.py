"""GRPO maths on hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from workflow_rl.learner.grpo import (
    aggregate,
    completion_mask,
    group_advantages,
    kl_penalty,
    policy_loss,
    token_logprobs,
    zero_std_fraction,
)
from workflow_rl.learner.grpo_is import sampler_is_weights

REWARDS = torch.tensor([1.0, 1.0, 0.0, 0.5, 0.5])
GROUPS = ["a", "a", "a", "b", "b"]


def test_group_advantages_group_scale():
    adv = group_advantages(REWARDS, GROUPS, scale="group", eps=1e-4)
    # group a: mean 2/3, unbiased std sqrt(((1/3)^2 * 2 + (2/3)^2) / 2) = sqrt(1/3)
    std_a = math.sqrt(1 / 3)
    expected = [(1 / 3) / (std_a + 1e-4), (1 / 3) / (std_a + 1e-4), (-2 / 3) / (std_a + 1e-4), 0.0, 0.0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)


def test_group_advantages_batch_and_none_scale():
    # batch: mean 0.6, squared deviations .16 + .16 + .36 + .01 + .01 = .7, unbiased var .175
    batch_std = math.sqrt(0.175)
    adv = group_advantages(REWARDS, GROUPS, scale="batch", eps=1e-4)
    expected = [x / (batch_std + 1e-4) for x in (1 / 3, 1 / 3, -2 / 3, 0.0, 0.0)]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    assert group_advantages(REWARDS, GROUPS, scale="none").tolist() == pytest.approx(
        [1 / 3, 1 / 3, -2 / 3, 0.0, 0.0], abs=1e-7
    )
    with pytest.raises(ValueError):
        group_advantages(REWARDS, GROUPS, scale="nope")


def test_group_ids_may_be_ints_in_any_order_and_zero_std_fraction():
    adv = group_advantages(torch.tensor([0.0, 5.0, 1.0, 5.0]), [7, 3, 7, 3], scale="none")
    assert adv.tolist() == pytest.approx([-0.5, 0.0, 0.5, 0.0])
    assert zero_std_fraction(REWARDS, GROUPS) == 0.5
    assert zero_std_fraction(torch.tensor([1.0, 0.0, 2.0]), [1, 1, 2]) == 0.5  # singleton has std 0


def test_aggregation_modes():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert aggregate(per_token, mask, "token").item() == pytest.approx(7 / 3)
    assert aggregate(per_token, mask, "token", token_norm=14).item() == pytest.approx(0.5)
    assert aggregate(per_token, mask, "sequence").item() == pytest.approx((1.5 + 4.0) / 2)
    assert aggregate(per_token, mask, "constant").item() == pytest.approx(7 / 6)  # B=2, L=3
    assert aggregate(per_token, mask, "constant", constant_norm=10).item() == pytest.approx(7 / 20)


def _ratios(values):
    logp = torch.log(torch.tensor([values]))
    return logp, torch.zeros_like(logp)


def test_clipped_loss_low_and_high():
    # four one-token sequences with ratios 1.5, 0.5, 1.5, 0.5 and advantages +1, -1, -1, +1
    logp = torch.log(torch.tensor([[1.5], [0.5], [1.5], [0.5]]))
    old = torch.zeros_like(logp)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    mask = torch.ones_like(logp)
    out = policy_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28, agg="sequence")
    # per token: -min(1.5, 1.28) = -1.28 ; -min(-0.5, -0.8) = 0.8 ; -min(-1.5, -1.28) = 1.5 ; -min(0.5, 0.8) = -0.5
    assert out.loss.item() == pytest.approx((-1.28 + 0.8 + 1.5 - 0.5) / 4)
    assert out.clip_high == pytest.approx(0.25)
    assert out.clip_low == pytest.approx(0.25)
    assert out.ratio_mean == pytest.approx(1.0)


def test_delta_bounds_negative_advantage_loss():
    """TRL's ``delta`` (two-sided clipping): the ratio is capped at delta before the min."""
    logp = torch.log(torch.tensor([[5.0]])).requires_grad_()
    out = policy_loss(logp, torch.zeros_like(logp), torch.tensor([-1.0]), torch.ones_like(logp))
    assert out.loss.item() == pytest.approx(5.0)  # -min(-5, -1.28)
    out = policy_loss(logp, torch.zeros_like(logp), torch.tensor([-1.0]), torch.ones_like(logp), delta=3.0)
    assert out.loss.item() == pytest.approx(3.0)  # -min(min(5, 3) * -1, 1.28 * -1) = 3
    (grad,) = torch.autograd.grad(out.loss, logp)
    assert grad.item() == 0.0  # the cap is a constant: no gradient through a capped ratio
    # a positive advantage at ratio 5 is already clipped at 1 + eps_high: delta > 1.28 changes nothing
    pos = policy_loss(logp, torch.zeros_like(logp), torch.tensor([1.0]), torch.ones_like(logp), delta=3.0)
    assert pos.loss.item() == pytest.approx(-1.28)
    with pytest.raises(ValueError):
        policy_loss(logp, logp, torch.tensor([1.0]), torch.ones_like(logp), delta=0.5)


def test_kl_estimators():
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    ln2 = math.log(2)
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(ln2)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * ln2**2)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + ln2 - 1)  # exp(-ln2) + ln2 - 1
    assert kl_penalty(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k4")


def test_kl_term_added_per_token_with_beta():
    logp = torch.tensor([[math.log(0.5), 0.0]])
    ref = torch.tensor([[math.log(0.25), 0.0]])
    mask = torch.tensor([[1.0, 0.0]])
    kl = kl_penalty(logp, ref, "k3")
    out = policy_loss(logp, logp, torch.tensor([2.0]), mask, per_token_kl=kl, beta=0.1)
    # ratio 1: policy term -2 on the one active token, plus 0.1 * (0.5 + ln2 - 1)
    assert out.policy_loss.item() == pytest.approx(-2.0)
    assert out.loss.item() == pytest.approx(-2.0 + 0.1 * (math.log(2) - 0.5))
    assert out.kl.item() == pytest.approx(math.log(2) - 0.5)


def test_tis_weights_truncate_and_skip_search_rows():
    old = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]]))
    behavior = torch.log(torch.tensor([[0.25, 0.5], [0.1, 0.1]]))
    w = sampler_is_weights(old, behavior, torch.ones(2, 2), "token_truncate", clip_max=1.5,
                           has_behavior=torch.tensor([True, False]))
    assert w.flatten().tolist() == pytest.approx([1.5, 0.5, 1.0, 1.0])
    out = policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2),
                      is_weights=torch.tensor([[1.5, 0.5]]))
    assert out.loss.item() == pytest.approx(-(1.5 + 0.5) / 2)


def test_mask_from_lengths_keeps_eos_equal_to_pad():
    eos = pad = 0
    completion = torch.tensor([[7, 8, eos, pad], [eos, pad, pad, pad], [9, 9, 9, 9]])
    lengths = [3, 1, 4]  # EOS counted in the length; the third was truncated (no EOS)
    mask = completion_mask(lengths, 4)
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert mask[1, 0] == 1 and completion[1, 0] == pad  # the EOS (== pad id) is trained on
    masked = completion_mask(lengths, 4, truncated=[False, False, True], mask_truncated=True)
    assert masked.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(ValueError):
        completion_mask([5], 4)


def test_token_logprobs_match_naive_in_chunks():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=gen)
    ids = torch.randint(0, 11, (2, 5), generator=gen)
    for temperature in (1.0, 0.7):
        naive = torch.log_softmax(logits / temperature, -1).gather(-1, ids[..., None]).squeeze(-1)
        ours, ent = token_logprobs(logits, ids, temperature, chunk_rows=3, with_entropy=True)
        assert torch.allclose(ours, naive, atol=1e-6)
        p = torch.softmax(logits / temperature, -1)
        assert torch.allclose(ent, -(p * p.log()).sum(-1), atol=1e-5)
    # tiny hand example: logits [0, ln 3] -> probs [1/4, 3/4]
    lp = token_logprobs(torch.tensor([[0.0, math.log(3)]]), torch.tensor([1]))
    assert lp.item() == pytest.approx(math.log(0.75))
    with pytest.raises(ValueError):
        token_logprobs(logits, ids, 0.0)


def test_first_on_policy_step_is_reinforce_with_baseline():
    """Ratio is exactly 1 and the gradient equals that of -(A * logp).sum() / n_tokens (rule 4)."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(6, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, 9, (3, 4), generator=gen)
    mask = completion_mask([4, 2, 3], 4).double()
    adv = torch.tensor([0.7, -1.2, 0.5], dtype=torch.float64)

    logp = token_logprobs(hidden @ weight, ids, 0.7)
    out = policy_loss(logp, logp.detach(), adv, mask)
    assert out.ratio_mean == 1.0 and out.ratio_std == 0.0
    (grad,) = torch.autograd.grad(out.loss, weight)

    logp2 = token_logprobs(hidden @ weight, ids, 0.7)
    reinforce = -(adv[:, None] * logp2 * mask).sum() / mask.sum()
    (grad_ref,) = torch.autograd.grad(reinforce, weight)
    assert torch.allclose(grad, grad_ref, atol=1e-6, rtol=0)
    assert grad.abs().sum() > 0  # a real learning signal, not "no signal"
