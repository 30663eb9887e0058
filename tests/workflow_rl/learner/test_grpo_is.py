"""The objective's newer options on hand-computed numbers: GSPO's sequence ratio, the bias-corrected KL,
sampler-mismatch IS modes, the off-policy sequence mask and the high-entropy token mask."""

from __future__ import annotations

import math

import pytest
import torch

from workflow_rl.learner.grpo import kl_penalty, policy_loss, sequence_log_ratio
from workflow_rl.learner.grpo_is import high_entropy_mask, mask_stats, off_policy_mask, sampler_is_weights

LN2 = math.log(2)


# ---------------------------------------------------------------- sequence-level ratio (GSPO)


def test_sequence_ratio_is_the_masked_mean_log_ratio():
    # row 0: log-ratios [ln 2, 0] -> mean ln2 / 2 -> ratio sqrt(2); row 1: [ln 0.5, 5 (padding)] -> 0.5
    logp = torch.tensor([[LN2, 0.0], [math.log(0.5), 5.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    seq = sequence_log_ratio(logp, torch.zeros_like(logp), mask)
    assert seq.shape == (2, 1)
    assert torch.exp(seq).flatten().tolist() == pytest.approx([math.sqrt(2), 0.5])
    # advantages +1 and -1: row 0 clipped at 1.28 on both tokens (loss -1.28 each); row 1 at 1 - 0.2:
    # -min(0.5 * -1, 0.8 * -1) = 0.8 on its one token. Token mean over 3 tokens.
    out = policy_loss(logp, torch.zeros_like(logp), torch.tensor([1.0, -1.0]), mask, level="sequence")
    assert out.loss.item() == pytest.approx((-1.28 * 2 + 0.8) / 3)
    assert out.clip_high == pytest.approx(2 / 3) and out.clip_low == pytest.approx(1 / 3)
    assert out.ratio_mean == pytest.approx((2 * math.sqrt(2) + 0.5) / 3)  # each token carries its row's ratio


def test_sequence_ratio_gradient_is_shared_over_the_tokens():
    # log-ratios [0.1, -0.1]: sequence ratio exp(0) = 1 (inside the clip range), A = 1, token mean over 2
    # tokens: loss = -(r + r) / 2 = -r and dr/dlogp_t = r / |y| = 1/2 -> gradient [-1/2, -1/2].
    # Token level instead: loss = -(e^0.1 + e^-0.1) / 2 -> gradient [-e^0.1 / 2, -e^-0.1 / 2].
    old = torch.zeros(1, 2)
    adv, mask = torch.tensor([1.0]), torch.ones(1, 2)
    logp = torch.tensor([[0.1, -0.1]], requires_grad=True)
    (grad_seq,) = torch.autograd.grad(policy_loss(logp, old, adv, mask, level="sequence").loss, logp)
    assert grad_seq.flatten().tolist() == pytest.approx([-0.5, -0.5])
    (grad_tok,) = torch.autograd.grad(policy_loss(logp, old, adv, mask, level="token").loss, logp)
    assert grad_tok.flatten().tolist() == pytest.approx([-math.exp(0.1) / 2, -math.exp(-0.1) / 2])
    with pytest.raises(ValueError):
        policy_loss(logp, old, adv, mask, level="row")


# ---------------------------------------------------------------- KL: plain k3 vs bias-corrected


def _kl_grad(logp_value: float, old_value: float, ref_value: float, corrected: bool) -> float:
    """d loss / d logp of a one-token batch whose loss is only beta * KL (A = 0, beta = 1)."""
    logp = torch.tensor([[logp_value]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[old_value]], dtype=torch.float64)
    kl = kl_penalty(logp, torch.tensor([[ref_value]], dtype=torch.float64), "k3")
    out = policy_loss(logp, old, torch.zeros(1, dtype=torch.float64), torch.ones_like(old), per_token_kl=kl,
                      beta=1.0, kl_bias_correction=corrected)
    (grad,) = torch.autograd.grad(out.loss, logp)
    return grad.item()


def test_plain_k3_gradient_is_biased_by_the_expected_factor():
    """pi = 1/2, pi_old = 1/4 (ratio r = 2), ref = 1/4 (q = ref / pi = 1/2).

    Plain k3 = q - log q - 1 in the loss: d/dlogp = 1 - q = 1/2.
    Corrected r * k3: d/dlogp = r * k3 + r * (1 - q) = r * (q - log q - 1 + 1 - q) = -r log q = 2 ln 2.
    So the corrected gradient is (-r log q) / (1 - q) = 4 ln 2 = 2.77 times the plain one here.
    """
    plain = _kl_grad(math.log(0.5), math.log(0.25), math.log(0.25), corrected=False)
    corrected = _kl_grad(math.log(0.5), math.log(0.25), math.log(0.25), corrected=True)
    assert plain == pytest.approx(0.5, abs=1e-12)
    assert corrected == pytest.approx(2 * LN2, abs=1e-12)
    assert corrected / plain == pytest.approx(4 * LN2, abs=1e-12)
    # at ratio 1 the value is the same but the gradient still differs: -log q = ln 2 vs 1 - q = 1/2
    assert _kl_grad(math.log(0.5), math.log(0.5), math.log(0.25), corrected=True) == pytest.approx(LN2, abs=1e-12)


def test_bias_corrected_k3_has_the_reverse_kl_gradient_in_expectation():
    """Exact expectation over a 3-token vocabulary, sampling from pi_old != pi: the ratio-weighted k3's
    expected gradient is grad KL(pi || ref); plain k3's is grad KL(ref || pi) (the forward KL)."""
    theta = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)  # the sampling policy
    ref = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)

    def expected_grad(corrected: bool) -> torch.Tensor:
        total = torch.zeros(3, dtype=torch.float64)
        for y in range(3):  # E_{y ~ old}[grad of the one-token loss]
            logp = torch.log_softmax(theta, 0)[y].reshape(1, 1)
            kl = kl_penalty(logp, ref[y].log().reshape(1, 1), "k3")
            out = policy_loss(logp, old[y].log().reshape(1, 1), torch.zeros(1, dtype=torch.float64),
                              torch.ones(1, 1, dtype=torch.float64), per_token_kl=kl, beta=1.0,
                              kl_bias_correction=corrected)
            (g,) = torch.autograd.grad(out.loss, theta)
            total += old[y] * g
        return total

    pi = torch.softmax(theta, 0)
    (reverse,) = torch.autograd.grad((pi * (pi.log() - ref.log())).sum(), theta)
    (forward,) = torch.autograd.grad((ref * (ref.log() - torch.log_softmax(theta, 0))).sum(), theta)
    corrected = expected_grad(True)
    assert torch.allclose(corrected, reverse, atol=1e-12)
    # plain k3 sampled from old is not even the forward-KL gradient (it lacks the ratio too) ...
    plain = expected_grad(False)
    assert not torch.allclose(plain, reverse, atol=1e-3)
    # ... and on-policy (old = pi) plain k3 gives exactly the forward-KL gradient
    on_policy = torch.zeros(3, dtype=torch.float64)
    for y in range(3):
        logp = torch.log_softmax(theta, 0)[y].reshape(1, 1)
        out = policy_loss(logp, logp.detach(), torch.zeros(1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64),
                          per_token_kl=kl_penalty(logp, ref[y].log().reshape(1, 1), "k3"), beta=1.0)
        (g,) = torch.autograd.grad(out.loss, theta)
        on_policy += pi[y].detach() * g
    assert torch.allclose(on_policy, forward, atol=1e-12)


def test_corrected_kl_metric_is_the_weighted_term():
    # ratio 2, k3 at q = 1/2: 0.5 + ln 2 - 1; the loss and the kl metric carry 2 * that
    logp = torch.tensor([[math.log(0.5)]])
    kl = kl_penalty(logp, torch.tensor([[math.log(0.25)]]), "k3")
    out = policy_loss(logp, torch.tensor([[math.log(0.25)]]), torch.zeros(1), torch.ones(1, 1), per_token_kl=kl,
                      beta=0.1, kl_bias_correction=True)
    assert out.kl.item() == pytest.approx(2 * (LN2 - 0.5))
    assert out.loss.item() == pytest.approx(0.1 * 2 * (LN2 - 0.5))


# ---------------------------------------------------------------- sampler-mismatch IS modes

# old - behavior per token: row 0 [ln 2, ln 4, 0] (sum ln 8); row 1 [ln 0.5, ln 1.5, padding] (sum ln 0.75)
OLD = torch.tensor([[LN2, math.log(4), 0.0], [math.log(0.5), math.log(1.5), 7.0]])
BEHAVIOR = torch.zeros(2, 3)
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


@pytest.mark.parametrize(("mode", "clip_min", "expected"), [
    ("token_truncate", None, [[2, 3, 1], [0.5, 1.5, 1]]),  # clamp each token at 3
    ("token_mask", None, [[2, 0, 1], [0.5, 1.5, 1]]),  # 4 > 3: that token is dropped
    ("token_mask", 0.6, [[2, 0, 1], [0, 1.5, 1]]),  # 0.5 < 0.6 dropped too
    ("token_truncate", 0.6, [[2, 3, 1], [0.6, 1.5, 1]]),
    ("sequence_truncate", None, [[3, 3, 3], [0.75, 0.75, 0.75]]),  # exp(sum): 8 -> 3, 0.75 kept
    ("sequence_mask", None, [[0, 0, 0], [0.75, 0.75, 0.75]]),  # 8 > 3: the whole sequence is dropped
    ("sequence_mask", 0.8, [[0, 0, 0], [0, 0, 0]]),  # 0.75 < 0.8 too
])
def test_sampler_is_weights_modes(mode, clip_min, expected):
    w = sampler_is_weights(OLD, BEHAVIOR, MASK, mode, clip_max=3.0, clip_min=clip_min)
    assert w.flatten().tolist() == pytest.approx(sum(expected, []))


def test_sampler_is_weights_leave_search_rows_at_one_and_count_masks():
    w = sampler_is_weights(OLD, BEHAVIOR, MASK, "sequence_mask", 3.0, has_behavior=torch.tensor([True, False]))
    assert w.flatten().tolist() == [0, 0, 0, 1, 1, 1]
    # row 0: all 3 active tokens masked -> 1 masked sequence of 2
    assert mask_stats(w, MASK) == (3.0, 1.0, 2)
    # counting only rows with behavior logprobs: 3 tokens, 1 sequence, of 1
    assert mask_stats(w, MASK, torch.tensor([True, False])) == (3.0, 1.0, 1)
    # token_mask drops one token of row 0: not a whole sequence
    assert mask_stats(sampler_is_weights(OLD, BEHAVIOR, MASK, "token_mask", 3.0), MASK) == (1.0, 0.0, 2)
    with pytest.raises(ValueError):
        sampler_is_weights(OLD, BEHAVIOR, MASK, "token_truncate", None, None)
    with pytest.raises(ValueError):
        sampler_is_weights(OLD, BEHAVIOR, MASK, "row_mask", 3.0)


def test_masked_sequence_leaves_the_policy_term_but_not_the_normaliser():
    # ratio 1, A = [+1, +1]; sequence_mask drops row 0 (3 tokens): only row 1's 2 tokens count, but the
    # token normaliser is still 5 (TRL's num_items_in_batch): loss = -(0.75 + 0.75) / 5
    w = sampler_is_weights(OLD, BEHAVIOR, MASK, "sequence_mask", 3.0)
    out = policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([1.0, 1.0]), MASK, is_weights=w)
    assert out.loss.item() == pytest.approx(-1.5 / 5)


# ---------------------------------------------------------------- off-policy sequence mask


def test_off_policy_mask_drops_negative_far_sequences_only():
    # sampling - logp: row 0 [1.0, 0.2] mean 0.6 > 0.5 and A < 0 -> dropped; row 1 [0.2, 0.4, padding 9]
    # mean 0.3 -> kept; row 2 mean 2.0 but A > 0 -> kept; row 3 mean 2.0 and A = 0 -> kept (A >= 0)
    logp = torch.zeros(4, 3)
    sampling = torch.tensor([[1.0, 0.2, 0.0], [0.2, 0.4, 9.0], [2.0, 2.0, 2.0], [2.0, 2.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([-1.0, -1.0, 1.0, 0.0])
    keep = off_policy_mask(adv, logp, sampling, mask, threshold=0.5)
    assert keep.tolist() == [0.0, 1.0, 1.0, 1.0]
    # policy term at ratio 1: per token -A -> [1, 1 | 1, 1 | -1 x3 | 0 x3]; row 0 dropped: (2 - 3) / 10
    kl = torch.full((4, 3), 0.5)
    out = policy_loss(logp, logp, adv, mask, per_token_kl=kl, beta=1.0, sequence_keep=keep)
    assert out.policy_loss.item() == pytest.approx(-1 / 10)
    assert out.loss.item() == pytest.approx(-1 / 10 + 0.5)  # the KL term keeps every token


# ---------------------------------------------------------------- high-entropy tokens


def test_high_entropy_mask_keeps_the_top_quantile_of_active_tokens():
    entropy = torch.tensor([[0.1, 0.5, 0.9], [0.3, 0.7, 5.0]])  # 5.0 is padding
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # active sorted [0.1, 0.3, 0.5, 0.7, 0.9]; quantile 0.4 -> cut at the 0.6 quantile: position
    # 0.6 * 4 = 2.4 -> 0.5 + 0.4 * (0.7 - 0.5) = 0.58 -> keep 0.9 and 0.7
    assert high_entropy_mask(entropy, mask, 0.4).tolist() == [[False, False, True], [False, True, False]]
    assert high_entropy_mask(entropy, mask, 1.0).tolist() == [[True, True, True], [True, True, False]]
    assert high_entropy_mask(entropy, mask, 0.0).tolist() == [[False, False, True], [False, False, False]]
    assert not high_entropy_mask(entropy, torch.zeros_like(mask), 0.5).any()


def test_token_keep_masks_the_policy_term_only():
    # ratio 1, A = 2: policy per token -2 on the 2 kept of 4 tokens -> -4 / 4; KL 0.25 on all 4 tokens
    keep = torch.tensor([[True, False], [False, True]])
    out = policy_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([2.0, 2.0]), torch.ones(2, 2),
                      per_token_kl=torch.full((2, 2), 0.25), beta=1.0, token_keep=keep)
    assert out.policy_loss.item() == pytest.approx(-1.0)
    assert out.loss.item() == pytest.approx(-1.0 + 0.25)
