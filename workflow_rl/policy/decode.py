"""The two hot loops of :class:`workflow_rl.policy.model.Policy`: batched sampling and teacher-forced logits.

Both use one layout, so a policy scoring its own samples sees the same computation: prompts are
left-padded (positions counted from each row's first real token, so a padded row computes what
it would alone), completions follow them. Logits are only ever computed where they are needed
(``logits_to_keep``): the last prompt position and the completion positions.

Rows that share a prompt (a GRPO group) share its forward pass, in sampling, scoring and training
alike: the prompt is run once, its KV cache is gathered to the rows, and only the completions are
run per row. With grad, the gather's backward adds each prompt's row gradients in row order
(:class:`_ShareRows`), so training stays bit-reproducible. For a chat prompt of ~1,650 tokens and
completions of ~50 this is most of a training step's work done once per group instead of per row.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from workflow_rl.policy.lean_decode import lean_decoder
from workflow_rl.policy.logprobs import log_softmax


def left_pad(seqs: list[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` of ``seqs`` left-padded with ``pad`` to the longest one (``[N, W]`` each)."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.tensor([[pad] * (width - len(s)) + list(s) for s in seqs], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long, device=device)
    return ids.view(len(seqs), width), mask.view(len(seqs), width)


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail outside the smallest set of tokens whose mass reaches ``top_p``."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    return filtered / filtered.sum(-1, keepdim=True)


def draw(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token per row of ``probs`` (``[N, V]``, rows summing to > 0), token ``k`` with
    probability ``probs[k] / sum``, by inverting the float64 CDF at one seeded uniform per row.

    Zero-probability tokens are never drawn (their CDF step is empty); the clamp only matters
    if ``u`` rounds up to the total (probability ~1e-16).
    """
    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=gen, dtype=torch.float64, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


@functools.cache
def cache_name() -> str:
    """The name of the KV cache in model forwards and outputs for the installed ``transformers``.

    transformers 5.x renamed ``past_key_values`` to ``cache``; the old name still works there but
    warns (a FutureWarning per forward, a logger warning per output access) and is to be removed,
    while 4.x (still within our dependency range) only knows ``past_key_values``.
    """
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _prefill(model, prompt_ids: list[list[int]], pad: int, device: torch.device):
    """Run the distinct prompts once (KV cache kept); ``(last-position logits [P, V], cache, mask, lengths)``."""
    ids, mask = left_pad(prompt_ids, pad, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :], getattr(out, cache_name()), mask, mask.sum(-1)


@dataclass
class Drawn:
    """Raw result of :func:`sample_tokens`; row ``b`` is prompt ``b // n``'s ``b % n``-th sample."""

    tokens: list[list[int]]  # sampled ids, cut at each row's length (EOS included when sampled)
    logprobs: list[list[float]]  # behavior logprob of each sampled id at the sampling temperature


@torch.no_grad()
def sample_tokens(model, prompt_ids: list[list[int]], n: int, temperature: float, top_p: float,
                  max_new_tokens: int, eos: int, seed: int) -> Drawn:
    """Sample ``n`` continuations of each prompt with a KV cache; record ``log_softmax(logits/T)``.

    Tokens are drawn by inverting the CDF: one seeded uniform per row, located in the float64
    cumulative sum of ``p`` (token ``k`` is picked with probability ``p_k``; zero-probability
    tokens never); on CPU this is ~15x cheaper than ``torch.multinomial`` or an exponential
    race, which spend their time drawing a random number per vocabulary entry. ``temperature
    == 0`` is greedy (logprobs at T = 1). The EOS id doubles as padding; row lengths are
    counted, never inferred from token values.
    """
    if not prompt_ids or n < 1:
        return Drawn([], [])
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    logits, cache, prompt_mask, prompt_len = _prefill(model, prompt_ids, eos, device)
    rows = len(prompt_ids) * n
    if n > 1:  # every sample of a prompt continues the same prefix: copy its cache, not its compute
        cache.batch_repeat_interleave(n)
        logits, prompt_mask, prompt_len = (t.repeat_interleave(n, dim=0) for t in (logits, prompt_mask, prompt_len))
    width = prompt_mask.shape[1]
    lean = lean_decoder(model, cache, prompt_mask, prompt_len, width + max_new_tokens)
    attn = torch.ones(rows, width + max_new_tokens, dtype=torch.long, device=device)
    attn[:, :width] = prompt_mask  # decode columns stay 1: finished rows keep decoding padding, unread
    positions = prompt_len[:, None]
    tokens = torch.full((rows, max_new_tokens), eos, dtype=torch.long, device=device)
    logps = torch.zeros(rows, max_new_tokens, dtype=torch.float32, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    steps = 0
    for t in range(max_new_tokens):
        scaled = logits.float()
        if temperature > 0 and temperature != 1.0:  # x / 1.0 == x: skip the pass
            scaled = scaled / temperature
        logprobs = log_softmax(scaled)  # the learner's formula (torch.log_softmax is less exact on CPU)
        if temperature == 0:
            token = logprobs.argmax(-1)
        else:
            probs = logprobs.exp()
            if top_p < 1.0:
                probs = nucleus(probs, top_p)
            token = draw(probs, gen)
        token = torch.where(done, eos, token)
        tokens[:, t] = token
        logps[:, t] = logprobs.gather(-1, token[:, None]).squeeze(-1)
        lengths += (~done).long()
        done |= token == eos
        steps = t + 1
        if t + 1 == max_new_tokens or bool(done.all()):
            break  # no forward for a token that will never be sampled
        if lean is not None:
            logits = lean.step(token, t)
        else:
            logits = model(input_ids=token[:, None], attention_mask=attn[:, : width + t + 1], position_ids=positions + t,
                           use_cache=True, **{cache_name(): cache}).logits[:, -1, :]
    lens = lengths.tolist()
    ids, lps = tokens[:, :steps].tolist(), logps[:, :steps].tolist()
    return Drawn([row[:k] for row, k in zip(ids, lens, strict=True)],
                 [row[:k] for row, k in zip(lps, lens, strict=True)])


class _ShareRows(torch.autograd.Function):
    """``x[index]`` (rows of the distinct prompts to the rows that share them) whose backward sums
    each prompt's row gradients with one ``sum(0)`` over its rows in order. Autograd's own backward
    of a gather (``index_add``) adds rows in a thread-dependent order, so two identical trainings
    (or a resumed one) differed in the last bits (measured: 2 threads, different weights after 6
    steps); this one is the same on every run."""

    @staticmethod
    def forward(ctx, x, index, groups):  # noqa: D102
        ctx.groups, ctx.n = groups, x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        out = grad.new_zeros((ctx.n, *grad.shape[1:]))
        for p, rows in enumerate(ctx.groups):
            out[p] = grad.index_select(0, rows).sum(0)
        return out, None, None


def _share(x: torch.Tensor, index: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
    """``x[index]``, through :class:`_ShareRows` when a gradient may flow back."""
    return _ShareRows.apply(x, index, groups) if x.requires_grad else x.index_select(0, index)


def _shareable(model) -> bool:
    """Whether rows may share a prompt pass: not while dropout is active (the whole group would
    share one dropout draw), nor through a DDP/FSDP wrapper (``.module``), whose gradient hooks
    expect one forward per backward."""
    return not hasattr(model, "module") and not _stochastic(model)


def _stochastic(model) -> bool:
    """True when a forward is random: training mode with dropout (modules or attention) > 0."""
    if not model.training:
        return False
    config = getattr(model, "config", None)
    if float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0:
        return True
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def completion_logits(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], pad: int) -> torch.Tensor:
    """Teacher-forced logits ``[B, L_max, V]`` predicting each completion token (with grad).

    Row ``b``'s position ``j < len(completion_ids[b])`` holds the logits that predict
    ``completion_ids[b][j]``; positions past a row's length are padding (finite, ignored).
    The last completion token is never fed (nothing is predicted from it). Rows with the same
    prompt share one prompt pass (see the module docstring) where :func:`_shareable`; otherwise
    one pass over
    ``left-padded prompt + right-padded completion`` keeps only the completion positions.
    """
    device = next(model.parameters()).device
    n_rows = len(completion_ids)
    l_max = max((len(c) for c in completion_ids), default=0)
    if n_rows == 0 or l_max == 0:
        vocab = model.get_output_embeddings().weight.shape[0]
        return torch.zeros(n_rows, l_max, vocab, device=device)
    distinct: dict[tuple[int, ...], int] = {}
    which = [distinct.setdefault(tuple(p), len(distinct)) for p in prompt_ids]
    tails = [list(c[:-1]) + [pad] * (l_max - max(len(c), 1)) for c in completion_ids]  # right-padded inputs
    tail_mask = torch.tensor([[1] * (len(c) - 1) + [0] * (l_max - max(len(c), 1)) for c in completion_ids],
                             dtype=torch.long, device=device).view(n_rows, l_max - 1)
    if len(distinct) < n_rows and _shareable(model):
        last, cache, prompt_mask, prompt_len = _prefill(model, [list(p) for p in distinct], pad, device)
        index = torch.tensor(which, device=device)
        groups = [torch.tensor([b for b, w in enumerate(which) if w == p], device=device) for p in range(len(distinct))]
        if l_max == 1:
            return _share(last, index, groups)[:, None, :]
        # Plain per-layer key/value tensors are gathered here (with the reproducible backward); another
        # cache is gathered by its own method when no gradient flows; else one pass below.
        layers = getattr(cache, "layers", None) or []
        plain = bool(layers) and all(type(x).__name__ == "DynamicLayer" for x in layers)
        if plain or (not torch.is_grad_enabled() and hasattr(cache, "batch_select_indices")):
            if plain:
                for layer in layers:
                    layer.keys, layer.values = _share(layer.keys, index, groups), _share(layer.values, index, groups)
            else:
                cache.batch_select_indices(index)
            attn = torch.cat([prompt_mask[index], tail_mask], dim=1)
            positions = prompt_len[index][:, None] + torch.arange(l_max - 1, device=device)
            out = model(input_ids=torch.tensor(tails, device=device), attention_mask=attn, position_ids=positions,
                        use_cache=True, **{cache_name(): cache})
            return torch.cat([_share(last, index, groups)[:, None, :], out.logits], dim=1)
    ids, prompt_mask = left_pad([list(p) for p in prompt_ids], pad, device)
    ids = torch.cat([ids, torch.tensor(tails, dtype=torch.long, device=device).view(n_rows, l_max - 1)], dim=1)
    attn = torch.cat([prompt_mask, tail_mask], dim=1)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=l_max).logits
