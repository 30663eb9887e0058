"""The learner's selective log-softmax (workflow_rl.learner.grpo.token_logprobs) and its closed-form backward."""

from __future__ import annotations

import math

import pytest
import torch

from workflow_rl.learner.grpo import token_logprobs


def test_gradient_hand_values():
    # logits [0, ln 3], token 1: p = [1/4, 3/4], d logp / d logits = onehot - p = [-1/4, 1/4]
    logits = torch.tensor([[0.0, math.log(3)]], requires_grad=True)
    token_logprobs(logits, torch.tensor([1])).sum().backward()
    assert logits.grad[0].tolist() == pytest.approx([-0.25, 0.25])
    # at T = 1/2 the row is [0, 2 ln 3]: p = [1/10, 9/10], gradient (onehot - p) / T = [-0.2, 0.2]
    logits.grad = None
    lp = token_logprobs(logits, torch.tensor([1]), 0.5)
    assert lp.item() == pytest.approx(math.log(0.9))
    lp.sum().backward()
    assert logits.grad[0].tolist() == pytest.approx([-0.2, 0.2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gradient_equals_autograd_through_log_softmax(dtype, temperature):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, 11, generator=gen).to(dtype)
    ids = torch.randint(0, 11, (3, 5), generator=gen)
    weights = torch.randn(3, 5, generator=gen)  # an arbitrary upstream gradient
    ours_in, ref_in = base.clone().requires_grad_(), base.clone().requires_grad_()
    ours, entropy = token_logprobs(ours_in, ids, temperature, chunk_rows=4, with_entropy=True)  # 4: chunks split rows
    (ours * weights).sum().backward()
    scaled = ref_in.float() / temperature
    ref = torch.log_softmax(scaled, -1).gather(-1, ids[..., None]).squeeze(-1)
    (ref * weights).sum().backward()
    assert ours.dtype == torch.float32 and ours_in.grad.dtype == dtype and not entropy.requires_grad
    assert torch.allclose(ours, ref, atol=1e-6)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
    assert torch.allclose(ours_in.grad.float(), ref_in.grad.float(), atol=tol, rtol=0)
    p = torch.softmax(scaled, -1)
    assert torch.allclose(entropy, -(p * p.log()).sum(-1), atol=1e-5)


def test_empty_batch_and_no_grad():
    empty = token_logprobs(torch.zeros(0, 4, 7), torch.zeros(0, 4, dtype=torch.long), with_entropy=True)
    assert empty[0].shape == empty[1].shape == (0, 4)
    with torch.no_grad():
        lp = token_logprobs(torch.randn(2, 3, 5, requires_grad=True), torch.zeros(2, 3, dtype=torch.long))
    assert not lp.requires_grad
