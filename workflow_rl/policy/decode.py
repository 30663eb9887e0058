"""The two hot loops of :class:`workflow_rl.policy.model.Policy`: batched sampling and teacher-forced logits.

Each distinct prompt is run once, alone and unpadded (:func:`_prefill_one`), in sampling, scoring
and training alike, and its KV cache is gathered to the rows that share it (a GRPO group); only
the completions are run per row. With grad, the gather's backward adds each prompt's row
gradients in row order (:class:`_ShareRows`), so training stays bit-reproducible. For a chat
prompt of ~1,650 tokens and completions of ~50 this is most of a training step's work done once
per group instead of per row. A chat prompt's system message (the task, the operators, the
example: 704 of calc's ~730 tokens) is the same for every problem: the format says where it ends
(``shared_prefix``), and it is run once per call, every problem's own tail after it
(:func:`_prefill_prompts`): for 4 calc problems x 2 samples on SmolLM2, sampling went from 58 to
40 s and scoring from 24 to 10 s (side by side, loaded cores). Logits are only ever computed where they are needed
(``logits_to_keep``): the last prompt position and the completion positions.

Sampling decodes all rows together (prompts' caches left-padded, positions counted from each
row's first real token) and then records its logprobs with the learner's own computation: one
teacher-forced pass per prompt group (:func:`_group_logits`). Since no row's numbers depend on
the other prompts of its batch, the learner's ``old`` logprobs of a policy sample equal its
behaviour logprobs when its micro-batch holds the sample's group or part of it (docs/design.md rule 5
still logs the gap; a micro-batch of single rows of distinct prompts is one padded pass, which
differs by float32 rounding).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from workflow_rl.policy.lean_decode import lean_decoder
from workflow_rl.policy.logprobs import log_softmax, token_logprobs


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
    probability ``probs[k] / sum``, by inverting the float64 CDF at one seeded uniform per row."""
    return draw_at(probs, torch.rand(probs.shape[0], 1, generator=gen, dtype=torch.float64, device=probs.device))


def draw_at(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """:func:`draw` at given uniforms ``u`` (``[N, 1]`` float64 in [0, 1)).

    Zero-probability tokens are never drawn (their CDF step is empty); the clamp only matters
    if ``u`` rounds up to the total (probability ~1e-16).
    """
    cdf = probs.double().cumsum(-1)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


@functools.cache
def cache_name() -> str:
    """The name of the KV cache in model forwards and outputs for the installed ``transformers``.

    transformers 5.x renamed ``past_key_values`` to ``cache``; the old name still works there but
    warns (a FutureWarning per forward, a logger warning per output access) and is to be removed,
    while 4.x (still within our dependency range) only knows ``past_key_values``.
    """
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _prefill_one(model, ids: list[int], device: torch.device):
    """Run one prompt alone, unpadded; ``(last-position logits [1, V], per-layer (keys, values) [1, H, P, D])``.

    Sampling, its recorded logprobs and the learner all run each distinct prompt on its own, so
    a prompt's keys and values are the same bits whatever else is in the batch. Left padding
    shifts them (and SDPA's key blocks with them): a prompt prefilled beside a longer one moved
    SmolLM2's completion logprobs by up to 1.1e-5 (measured), enough for the learner's ``old``
    to depend on how rows were grouped into micro-batches.
    """
    return _last_and_kv(model(input_ids=torch.tensor([ids], dtype=torch.long, device=device), use_cache=True,
                              logits_to_keep=1))


def _last_and_kv(out):
    """``(last-position logits [1, V], per-layer (keys, values))`` of a prefill's model output."""
    cache = getattr(out, cache_name())
    layers = getattr(cache, "layers", None)
    kv = [(x.keys, x.values) for x in layers] if layers is not None else list(zip(cache.key_cache, cache.value_cache, strict=True))
    return out.logits[:, -1, :], kv


def _extend(model, head: list[tuple[torch.Tensor, torch.Tensor]], tail: list[int], device: torch.device):
    """Run the tokens ``tail`` alone after an already computed prompt head (its per-layer ``head``
    keys/values, not modified); the same ``(last logits, per-layer (keys, values))`` as
    :func:`_prefill_one` of ``head + tail``, up to float32 rounding."""
    start = head[0][0].shape[-2]
    positions = torch.arange(start, start + len(tail), device=device)[None]
    return _last_and_kv(model(input_ids=torch.tensor([tail], dtype=torch.long, device=device), position_ids=positions,
                              use_cache=True, logits_to_keep=1, **{cache_name(): _kv_cache(head)}))


def _prefill_prompts(model, prompts: list[tuple[int, ...]], device: torch.device, shared_prefix=None) -> list:
    """:func:`_prefill_one` of each prompt, where ``shared_prefix(ids)`` (when given) says how many of a
    prompt's first tokens it shares with other prompts (a chat prompt's system message: the task,
    the operators and the example, 704 of calc's ~730 tokens); 0 for none.

    Each distinct head is run once, alone, and every prompt's tail alone after it (:func:`_extend`),
    so a prompt's numbers depend on its own tokens and split point only, never on the other prompts
    of the call: sampling, its recorded logprobs and the learner agree bit for bit, while a batch of
    problems pays for the shared system message once. With grad, every tail's gradient flows back
    into its head's one pass.
    """
    heads: dict[tuple[int, ...], list] = {}
    out = []
    for ids in prompts:
        k = shared_prefix(ids) if shared_prefix is not None else 0
        if not 0 < k < len(ids):
            out.append(_prefill_one(model, list(ids), device))
            continue
        if ids[:k] not in heads:
            heads[ids[:k]] = _prefill_one(model, list(ids[:k]), device)[1]
        out.append(_extend(model, heads[ids[:k]], list(ids[k:]), device))
    return out


def _kv_cache(kv: list[tuple[torch.Tensor, torch.Tensor]]):
    """A Hugging Face ``DynamicCache`` holding the given per-layer keys and values."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(kv):
        cache.update(k, v, i)
    return cache


def _group_logits(model, last: torch.Tensor, kv, completions: list[list[int]], pad: int) -> torch.Tensor:
    """Teacher-forced logits ``[R, L, V]`` of ``R`` completions of one prompt (``L`` their longest, >= 1),
    from that prompt's :func:`_prefill_one` (``last``, ``kv``), which this does not modify.

    The prompt's logits and keys/values are gathered to the rows through :func:`_share` (gradient
    summed in row order); the completions (the last token of each never fed) run in one pass
    after them, right-padded.
    """
    device = last.device
    rows, width = len(completions), max(len(c) for c in completions)
    index = torch.zeros(rows, dtype=torch.long, device=device)
    groups = [torch.arange(rows, device=device)]
    first = _share(last, index, groups)[:, None, :]
    if width == 1:
        return first
    prompt_len = kv[0][0].shape[-2]
    cache = _kv_cache([(_share(k, index, groups), _share(v, index, groups)) for k, v in kv])
    tails = torch.tensor([list(c[:-1]) + [pad] * (width - len(c)) for c in completions], dtype=torch.long,
                         device=device).view(rows, width - 1)
    attn = torch.tensor([[1] * (prompt_len + len(c) - 1) + [0] * (width - len(c)) for c in completions],
                        dtype=torch.long, device=device).view(rows, prompt_len + width - 1)
    positions = prompt_len + torch.arange(width - 1, device=device).expand(rows, -1)
    out = model(input_ids=tails, attention_mask=attn, position_ids=positions, use_cache=True,
                **{cache_name(): cache})
    return torch.cat([first, out.logits], dim=1)


def _left_padded(parts: list[torch.Tensor], width: int) -> torch.Tensor:
    """``[1, H, P_i, D]`` tensors zero-padded on the left of dim -2 to ``width`` and stacked on dim 0."""
    return torch.cat([torch.nn.functional.pad(x, (0, 0, width - x.shape[-2], 0)) for x in parts])


SCORE_LOGITS_BYTES = 1 << 28
"""Float32 logits one teacher-forced pass of :func:`sample_tokens` may hold (rows are split to fit)."""

DECODE_KV_BYTES = 1 << 30
"""Keys and values one decode pass of :func:`sample_tokens` may hold; more rows are decoded in several
passes. A row holds its prompt's cache plus its new tokens' (SmolLM2, a 730-token calc prompt and 64
new tokens: ~37 MB, so ~29 rows a pass), and a pass briefly holds it twice (the gathered prompt cache
and the decoder's buffers): the loop's 128 rows in one pass were ~9 GB, evaluation's 64 problems x 4
samples ~19 GB. Rows are decoded in order and draw the same uniforms either way (:func:`sample_tokens`)."""


@dataclass
class Drawn:
    """Raw result of :func:`sample_tokens`; row ``b`` is prompt ``b // n``'s ``b % n``-th sample."""

    tokens: list[list[int]]  # sampled ids, cut at each row's length (EOS included when sampled)
    logprobs: list[list[float]]  # behavior logprob of each sampled id at the sampling temperature


@torch.no_grad()
def sample_tokens(model, prompt_ids: list[list[int]], n: int, temperature: float, top_p: float,
                  max_new_tokens: int, eos: int, seed: int, teacher_forced: bool = True, shared_prefix=None) -> Drawn:
    """Sample ``n`` continuations of each prompt with a KV cache; record ``log_softmax(logits/T)``.

    Tokens are drawn by inverting the CDF: one seeded uniform per row, located in the float64
    cumulative sum of ``p`` (token ``k`` is picked with probability ``p_k``; zero-probability
    tokens never); on CPU this is ~15x cheaper than ``torch.multinomial`` or an exponential
    race, which spend their time drawing a random number per vocabulary entry. ``temperature
    == 0`` is greedy (logprobs at T = 1). The EOS id doubles as padding; row lengths are
    counted, never inferred from token values.

    The recorded logprobs are those of the drawn tokens under the same weights, computed once the
    rows are finished by one teacher-forced pass per prompt group over its kept prompt cache
    (:func:`_group_logits`, the learner's computation), so the learner's ``old`` reproduces them
    bit for bit. ``shared_prefix`` is :func:`_prefill_prompts`'s (the learner must be given the same).
    The decode steps' own logprobs (``teacher_forced=False``, kept for measuring) differ
    from it by float32 rounding alone: a token at a time sums in another order than a
    teacher-forced pass, which on SmolLM2's 30 layers reached 2.3e-5 (max over 241 tokens).
    """
    if not prompt_ids or n < 1:
        return Drawn([], [])
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    distinct: dict[tuple[int, ...], int] = {}
    source = [distinct.setdefault(tuple(p), len(distinct)) for p in prompt_ids for _ in range(n)]
    prefills = _prefill_prompts(model, list(distinct), device, shared_prefix)
    rows, index = len(source), torch.tensor(source, device=device)
    lens = torch.tensor([len(p) for p in distinct], device=device)
    width = int(lens.max())
    # Every row's uniforms up front, step-major: on CPU the same numbers as drawing one per row at
    # each step, so how rows are split into passes never changes what is sampled.
    uniforms = (torch.rand(max_new_tokens, rows, 1, generator=gen, dtype=torch.float64, device=device)
                if temperature > 0 else None)
    per_pass = rows_per_pass(prefills[0][1], width + max_new_tokens)
    ids: list[list[int]] = []
    logps: list[list[float]] = []
    for lo in range(0, rows, per_pass):
        part = slice(lo, lo + per_pass)
        got = _decode_pass(model, prefills, index[part], lens, width, max_new_tokens, temperature, top_p, eos,
                           None if uniforms is None else uniforms[:, part])
        ids += got[0]
        logps += got[1]
    if teacher_forced:
        return Drawn(ids, _teacher_forced_logprobs(model, prefills, source, ids, temperature or 1.0, eos))
    return Drawn(ids, logps)


def rows_per_pass(kv: list[tuple[torch.Tensor, torch.Tensor]], capacity: int) -> int:
    """Rows one decode pass may hold: :data:`DECODE_KV_BYTES` over a row's keys and values at
    ``capacity`` positions (``kv``: one prompt's per-layer ``[1, H, P, D]`` keys and values); at least 1."""
    per_position = sum(k.shape[1] * k.shape[3] * k.element_size() + v.shape[1] * v.shape[3] * v.element_size()
                       for k, v in kv)
    return max(1, DECODE_KV_BYTES // (capacity * per_position))


def _decode_pass(model, prefills, index: torch.Tensor, lens: torch.Tensor, width: int, max_new_tokens: int,
                 temperature: float, top_p: float, eos: int, uniforms: torch.Tensor | None):
    """Decode the rows ``index`` (each a prompt of ``prefills``; prompts left-padded to ``width``)
    together: ``(token ids, decode-step logprobs)`` per row, cut at its length; ``uniforms``
    ``[max_new_tokens, rows, 1]`` are the rows' draws (None: greedy)."""
    device = index.device
    rows = len(index)
    prompt_len = lens[index]
    prompt_mask = (torch.arange(width, device=device) >= width - prompt_len[:, None]).long()
    logits = torch.cat([last for last, _ in prefills])[index]
    # Every sample of a prompt continues the same prefix: its keys/values are copied, not recomputed.
    cache = _kv_cache([(_left_padded([kv[layer][0] for _, kv in prefills], width)[index],
                        _left_padded([kv[layer][1] for _, kv in prefills], width)[index])
                       for layer in range(len(prefills[0][1]))])
    lean = lean_decoder(model, cache, prompt_mask, prompt_len, width + max_new_tokens)
    if lean is not None:  # it copied the keys/values into its own buffers: drop the gathered copy now,
        cache = None  # not after decoding (the two copies are this pass's peak)
    attn = torch.ones(rows, width + max_new_tokens, dtype=torch.long, device=device)
    attn[:, :width] = prompt_mask  # decode columns stay 1: finished rows keep decoding padding, unread
    positions = prompt_len[:, None]
    tokens = torch.full((rows, max_new_tokens), eos, dtype=torch.long, device=device)
    logps = torch.zeros(rows, max_new_tokens, dtype=torch.float32, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    for t in range(max_new_tokens):
        scaled = logits.float()
        if temperature > 0 and temperature != 1.0:  # x / 1.0 == x: skip the pass
            scaled = scaled / temperature
        logprobs = log_softmax(scaled)  # the learner's formula (torch.log_softmax is less exact on CPU)
        if uniforms is None:
            token = logprobs.argmax(-1)
        else:
            probs = logprobs.exp()
            if top_p < 1.0:
                probs = nucleus(probs, top_p)
            token = draw_at(probs, uniforms[t])
        token = torch.where(done, eos, token)
        tokens[:, t] = token
        logps[:, t] = logprobs.gather(-1, token[:, None]).squeeze(-1)
        lengths += (~done).long()
        done |= token == eos
        if t + 1 == max_new_tokens or bool(done.all()):
            break  # no forward for a token that will never be sampled
        if lean is not None:
            logits = lean.step(token, t)
        else:
            logits = model(input_ids=token[:, None], attention_mask=attn[:, : width + t + 1], position_ids=positions + t,
                           use_cache=True, **{cache_name(): cache}).logits[:, -1, :]
    del cache, lean  # the decode buffers: the teacher-forced pass needs only the prompts' own
    lens_ = lengths.tolist()
    return ([row[:k] for row, k in zip(tokens.tolist(), lens_, strict=True)],
            [row[:k] for row, k in zip(logps.tolist(), lens_, strict=True)])


def _teacher_forced_logprobs(model, prefills, source: list[int], completions: list[list[int]], temperature: float,
                             pad: int) -> list[list[float]]:
    """Token logprobs of each row's completion under its prompt (``prefills[source[b]]``), as the
    learner computes them: a :func:`_group_logits` pass per prompt group (rows split so the logits
    fit :data:`SCORE_LOGITS_BYTES`), then :func:`workflow_rl.policy.logprobs.token_logprobs`."""
    out: list[list[float]] = [[] for _ in completions]
    vocab = prefills[0][0].shape[-1]
    for p, (last, kv) in enumerate(prefills):
        rows = [b for b, s in enumerate(source) if s == p and completions[b]]
        if not rows:
            continue
        per_pass = max(1, SCORE_LOGITS_BYTES // (max(len(completions[b]) for b in rows) * vocab * 4))
        for lo in range(0, len(rows), per_pass):
            chunk = [completions[b] for b in rows[lo : lo + per_pass]]
            logits = _group_logits(model, last, kv, chunk, pad)
            width = logits.shape[1]
            targets = torch.tensor([c + [pad] * (width - len(c)) for c in chunk], dtype=torch.long, device=logits.device)
            logp = token_logprobs(logits, targets.view(len(chunk), width), temperature).tolist()
            for b, c, row in zip(rows[lo : lo + per_pass], chunk, logp, strict=True):
                out[b] = row[: len(c)]
    return out


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


def completion_logits(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], pad: int,
                      shared_prefix=None) -> torch.Tensor:
    """Teacher-forced logits ``[B, L_max, V]`` predicting each completion token (with grad).

    Row ``b``'s position ``j < len(completion_ids[b])`` holds the logits that predict
    ``completion_ids[b][j]``; positions past a row's length are padding (finite, ignored).
    The last completion token is never fed (nothing is predicted from it). When some rows share
    a prompt and :func:`_shareable`, each distinct prompt is run once, alone, and its rows'
    completions after it (:func:`_group_logits`, as the sampler records its logprobs), so a row's
    logits do not depend on the other prompts of the batch; with ``shared_prefix`` (see
    :func:`_prefill_prompts`) the prompts' shared heads run once too, every prompt's tail after
    its head. Otherwise (every prompt its own, or
    dropout) one pass over ``left-padded prompt + right-padded completion`` keeps only the
    completion positions: a pass per prompt would save no compute there, and on a small model
    the many small passes cost 3-10x (bench_learner's tiny figure).
    """
    device = next(model.parameters()).device
    n_rows = len(completion_ids)
    l_max = max((len(c) for c in completion_ids), default=0)
    if n_rows == 0 or l_max == 0:
        vocab = model.get_output_embeddings().weight.shape[0]
        return torch.zeros(n_rows, l_max, vocab, device=device)
    distinct: dict[tuple[int, ...], int] = {}
    which = [distinct.setdefault(tuple(p), len(distinct)) for p in prompt_ids]
    if (len(distinct) < n_rows or shared_prefix is not None) and _shareable(model):
        parts, order = [], []
        for p, (last, kv) in enumerate(_prefill_prompts(model, list(distinct), device, shared_prefix)):
            rows = [b for b, w in enumerate(which) if w == p]
            logits = _group_logits(model, last, kv, [list(completion_ids[b]) or [pad] for b in rows], pad)
            parts.append(torch.nn.functional.pad(logits, (0, 0, 0, l_max - logits.shape[1])))
            order += rows
        inverse = torch.empty(n_rows, dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(n_rows)
        return torch.cat(parts).index_select(0, inverse.to(device))  # a permutation: each row's gradient once
    tails = [list(c[:-1]) + [pad] * (l_max - max(len(c), 1)) for c in completion_ids]  # right-padded inputs
    tail_mask = torch.tensor([[1] * (len(c) - 1) + [0] * (l_max - max(len(c), 1)) for c in completion_ids],
                             dtype=torch.long, device=device).view(n_rows, l_max - 1)
    ids, prompt_mask = left_pad([list(p) for p in prompt_ids], pad, device)
    ids = torch.cat([ids, torch.tensor(tails, dtype=torch.long, device=device).view(n_rows, l_max - 1)], dim=1)
    attn = torch.cat([prompt_mask, tail_mask], dim=1)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=l_max).logits
