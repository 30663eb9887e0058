"""Per-token log-probabilities of sampled ids, the one computation the sampler and the learner share.

It lives with the policy (which scores its own samples with it) and the learner imports it, so the
learner depends on the policy and never the reverse.
"""

from __future__ import annotations

import torch


def log_softmax(rows: torch.Tensor) -> torch.Tensor:
    """``rows - logsumexp(rows)`` over the last dimension, the log-softmax of the sampler and the learner.

    Not ``torch.log_softmax``: its CPU float32 kernel drifts from float64 as the vocabulary grows
    (measured, torch 2.13: 7e-6 at 49,152 entries, 1.4e-5 at 151,936; up to 2.3e-5 on SmolLM2's
    logits), where ``logsumexp`` stays within ~4e-6 at any size. The sampler recorded behaviour
    logprobs with it while the learner (:class:`_SelectiveLogSoftmax`) subtracted ``logsumexp``,
    which alone made SmolLM2's |old - behaviour| ~2e-5 on tokens whose logits were identical.
    """
    return rows - torch.logsumexp(rows, dim=-1, keepdim=True)


class _SelectiveLogSoftmax(torch.autograd.Function):
    """``log_softmax(rows / T)[ids]`` of flat ``[N, V]`` logits, ``chunk`` rows at a time.

    Saves only its input and the ``[N]`` logsumexps, and its backward is the closed form
    ``(onehot(ids) - softmax(rows / T)) * g / T`` per chunk: one exp pass, where autograd through
    ``gather`` + ``logsumexp`` keeps a float32 copy of every chunk and runs zero-fill, scatter,
    exp, multiply and add passes over ``[N, V]``. The optional entropy output is a metric (no grad).
    """

    @staticmethod
    def forward(ctx, logits, ids, temperature: float, chunk: int, with_entropy: bool):  # noqa: D102
        n = logits.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse_all = torch.empty(n, dtype=torch.float32, device=logits.device)
        entropy = torch.empty(n if with_entropy else 0, dtype=torch.float32, device=logits.device)
        for start in range(0, n, chunk):
            rows = logits[start : start + chunk].float()
            if temperature != 1.0:
                rows = rows / temperature
            lse = torch.logsumexp(rows, dim=-1)  # as log_softmax(): a sampled token's logit gives the same value
            out[start : start + chunk] = rows.gather(-1, ids[start : start + chunk, None]).squeeze(-1) - lse
            lse_all[start : start + chunk] = lse
            if with_entropy:
                entropy[start : start + chunk] = lse - (torch.softmax(rows, dim=-1) * rows).sum(-1)
        ctx.save_for_backward(logits, ids, lse_all)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(entropy)
        return out, entropy

    @staticmethod
    def backward(ctx, grad_out, _grad_entropy):  # noqa: D102
        logits, ids, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.chunk):
            rows = logits[start : start + ctx.chunk].float()
            if ctx.temperature != 1.0:
                rows = rows / ctx.temperature
            g = grad_out[start : start + ctx.chunk, None]
            part = torch.exp(rows - lse[start : start + ctx.chunk, None]).mul_(-g)
            part.scatter_add_(-1, ids[start : start + ctx.chunk, None], g)
            if ctx.temperature != 1.0:
                part = part.div_(ctx.temperature)
            grad[start : start + ctx.chunk] = part
        return grad, None, None, None, None


def token_logprobs(
    logits: torch.Tensor,
    ids: torch.Tensor,
    temperature: float = 1.0,
    chunk_rows: int = 256,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities ``log_softmax(logits / T)[ids]`` without a full ``[B, L, V]`` log-softmax.

    ``logits``: ``[..., V]`` (any float dtype); ``ids``: ``[...]`` token ids. Rows are processed
    ``chunk_rows`` at a time in float32 (logsumexp of the row minus the gathered logit), so the
    extra memory is O(chunk_rows * V) rather than O(B * L * V), in the backward pass too
    (:class:`_SelectiveLogSoftmax`). With ``with_entropy`` the per-token entropy of
    ``softmax(logits / T)`` is returned too (no grad: it is a metric).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for logprobs, got {temperature}")
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)
    if flat_logits.shape[0] == 0:
        logp = flat_logits.new_zeros(ids.shape, dtype=torch.float32)
        return (logp, torch.zeros_like(logp)) if with_entropy else logp
    logp, entropy = _SelectiveLogSoftmax.apply(flat_logits, ids.reshape(-1), float(temperature), chunk_rows,
                                               with_entropy)
    if with_entropy:
        return logp.reshape(ids.shape), entropy.reshape(ids.shape)
    return logp.reshape(ids.shape)
