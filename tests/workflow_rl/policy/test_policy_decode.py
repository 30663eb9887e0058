"""Fast sampling and teacher-forced scoring (workflow_rl.policy.decode, workflow_rl.policy.lean_decode).

Every fast path is checked against a plain Hugging Face computation it replaces: the lean decode
step against the model's own forward, batched greedy decoding against one-row-at-a-time greedy
decoding without a cache, the shared-prompt learner pass against per-row passes (values and
gradients), and the CDF sampler against hand-computed frequencies.
"""

from __future__ import annotations

import copy

import pytest
import torch

from workflow_rl.policy.decode import _shareable, cache_name, completion_logits, draw, left_pad, sample_tokens
from workflow_rl.policy.lean_decode import lean_decoder
from workflow_rl.policy.model import LoraSpec, Policy

PROMPTS = ["### Problem\nWhat is 2 + 3?\n### Workflow\n", "a much longer prompt to force left padding " * 3, "x"]


@pytest.fixture(scope="module")
def policy(tiny_cache):
    return Policy.load("builtin:tiny", cache_dir=tiny_cache, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def lora_policy(tiny_cache):
    """A LoRA policy whose adapter is not the identity (B != 0), so the adapter path matters."""
    p = Policy.load("builtin:tiny", cache_dir=tiny_cache, device="cpu", dtype=torch.float32, lora=LoraSpec(r=2, alpha=4))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in p.model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
    return p


GREEDY_MARGIN = 1e-3
"""Smallest gap between the two largest logits at which greedy equality is a fair test: the
batched, cached path differs from the reference by float rounding (~1e-6), so a closer tie could
flip the argmax with neither path wrong (the tiny policy's smallest gap on these prompts: 0.04)."""


def _reference_greedy(policy: Policy, prompt: list[int], max_new: int) -> tuple[list[int], list[float]]:
    """One row, no cache, no padding: the full sequence re-run for every token.

    Checks the premise of comparing greedy decodes: at every step the argmax leads the runner-up
    by at least ``GREEDY_MARGIN``.
    """
    ids, lps = list(prompt), []
    with torch.no_grad():
        for step in range(max_new):
            logits = policy.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            first, second = torch.topk(logits, 2).values.tolist()
            assert first - second > GREEDY_MARGIN, (
                f"premise: a near tie at greedy step {step} (top-2 logit gap {first - second:.2g}); "
                "the argmax is decided by rounding there: choose other prompts")
            logprobs = torch.log_softmax(logits, -1)
            tok = int(logprobs.argmax())
            ids.append(tok)
            lps.append(float(logprobs[tok]))
            if tok == policy.eos_token_id:
                break
    return ids[len(prompt):], lps


@pytest.mark.parametrize("which", ["full", "lora"])
def test_batched_greedy_equals_one_row_uncached_decoding(policy, lora_policy, which):
    p = policy if which == "full" else lora_policy
    samples = p.sample(PROMPTS, n=2, temperature=0.0, max_new_tokens=12)
    assert [s.prompt_index for s in samples] == [0, 0, 1, 1, 2, 2]
    for s in samples:
        ids, lps = _reference_greedy(p, list(s.prompt_token_ids), 12)
        assert list(s.completion_token_ids) == ids
        assert max(abs(a - b) for a, b in zip(s.behavior_logprobs, lps, strict=True)) < 1e-5
        assert s.truncated == (ids[-1] != p.eos_token_id)


@pytest.mark.parametrize("which", ["full", "lora"])
def test_lean_step_equals_the_model_forward(policy, lora_policy, which):
    p = policy if which == "full" else lora_policy
    model = p.model.eval()
    prompts = [p.encode(t) for t in PROMPTS]
    ids, mask = left_pad(prompts, p.eos_token_id, torch.device("cpu"))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        hf_cache = getattr(out, cache_name())
        lean = lean_decoder(model, copy.deepcopy(hf_cache), mask, mask.sum(-1), ids.shape[1] + 3)
        assert lean is not None
        attn = torch.cat([mask, torch.ones(len(prompts), 3, dtype=torch.long)], dim=1)
        for t, token in enumerate(torch.tensor([[5, 7, 9], [11, 13, 0], [2, 3, 4]]).T):
            ours = lean.step(token, t)
            theirs = model(input_ids=token[:, None], attention_mask=attn[:, : ids.shape[1] + t + 1],
                           position_ids=mask.sum(-1, keepdim=True) + t, **{cache_name(): hf_cache}).logits[:, -1]
            assert (ours - theirs).abs().max() < 1e-5


def test_lean_decoder_declines_what_it_does_not_reproduce(policy):
    model = copy.deepcopy(policy.model).eval()
    ids, mask = left_pad([[1, 2, 3]], 0, torch.device("cpu"))
    with torch.no_grad():
        cache = getattr(model(input_ids=ids, attention_mask=mask, use_cache=True), cache_name())
    assert lean_decoder(model, cache, mask, mask.sum(-1), 8) is not None
    model.config._attn_implementation = "eager"  # another attention function: keep HF's forward
    assert lean_decoder(model, cache, mask, mask.sum(-1), 8) is None
    model.config._attn_implementation = "sdpa"
    model.train()  # dropout would apply in HF's forward
    assert lean_decoder(model, cache, mask, mask.sum(-1), 8) is None


def test_fallback_forward_samples_the_same_tokens(policy):
    """The HF decode path (taken when the lean step declines) and the lean path agree."""
    fast = policy.sample(PROMPTS, n=2, temperature=1.0, max_new_tokens=10, seed=4)
    slow_model = copy.deepcopy(policy.model)
    slow_model.config._attn_implementation = "eager"
    slow = Policy(slow_model, policy.tokenizer, "", "").sample(PROMPTS, n=2, temperature=1.0, max_new_tokens=10, seed=4)
    assert [s.completion_token_ids for s in fast] == [s.completion_token_ids for s in slow]
    gap = max(abs(a - b) for f, s in zip(fast, slow, strict=True)
              for a, b in zip(f.behavior_logprobs, s.behavior_logprobs, strict=True))
    assert gap < 1e-5


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_rows_split_into_decode_passes_sample_the_same_tokens(policy, monkeypatch, temperature):
    """Splitting the rows into decode passes (to bound their keys/values) changes neither the tokens
    nor the recorded logprobs: each row's uniforms are drawn up front."""
    import workflow_rl.policy.decode as decode

    whole = policy.sample(PROMPTS, n=3, temperature=temperature, max_new_tokens=12, seed=7)
    passes: list[int] = []
    original = decode._decode_pass
    monkeypatch.setattr(decode, "_decode_pass", lambda *a: passes.append(len(a[2])) or original(*a))
    for per_pass, sizes in ((1, [1] * 9), (4, [4, 4, 1]), (9, [9])):
        monkeypatch.setattr(decode, "rows_per_pass", lambda kv, capacity, k=per_pass: k)
        passes.clear()
        split = policy.sample(PROMPTS, n=3, temperature=temperature, max_new_tokens=12, seed=7)
        assert passes == sizes
        assert [s.completion_token_ids for s in split] == [s.completion_token_ids for s in whole]
        assert [s.behavior_logprobs for s in split] == [s.behavior_logprobs for s in whole]
    gen = torch.Generator().manual_seed(3)  # the premise: up-front uniforms are the per-step ones (CPU)
    steps = torch.cat([torch.rand(5, 1, generator=gen, dtype=torch.float64) for _ in range(4)])
    assert torch.equal(steps.view(4, 5, 1), torch.rand(4, 5, 1, generator=gen.manual_seed(3), dtype=torch.float64))


def test_rows_per_pass_from_the_key_value_budget(monkeypatch):
    """SmolLM2's shapes (30 layers, 3 KV heads of 64, float32), a 730-token prompt and 64 new tokens:
    794 x 30 x 2 x 3 x 64 x 4 = 36,587,520 bytes a row, so 1 GiB holds 29 rows; never fewer than 1."""
    import workflow_rl.policy.decode as decode

    kv = [(torch.zeros(1, 3, 730, 64), torch.zeros(1, 3, 730, 64)) for _ in range(30)]
    assert decode.DECODE_KV_BYTES == 1 << 30 and decode.rows_per_pass(kv, 794) == 29
    monkeypatch.setattr(decode, "DECODE_KV_BYTES", 1000)
    assert decode.rows_per_pass(kv, 794) == 1


def test_cdf_sampler_frequencies_zero_mass_and_seed():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3, 0.0]]).expand(40000, 5)
    tokens = draw(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=5).double() / len(tokens)
    assert freq[1] == 0 and freq[4] == 0  # never a zero-probability token
    assert torch.allclose(freq, torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0], dtype=torch.float64), atol=0.01)
    assert torch.equal(draw(probs, torch.Generator().manual_seed(0)), tokens)  # seeded
    unnormalised = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    assert draw(unnormalised, torch.Generator().manual_seed(1)).tolist() == [1, 0]


def test_one_token_and_eos_equal_to_padding(policy):
    one = policy.sample(PROMPTS, n=2, temperature=1.0, max_new_tokens=1, seed=0)
    assert all(len(s.completion_token_ids) == len(s.behavior_logprobs) == 1 for s in one)
    assert policy.sample([], n=3) == []
    # Greedy after forcing EOS to be the argmax: the completion is exactly [EOS], stopped, kept.
    # The premise is set up explicitly, not hoped for from the weights: a hook adds a large EOS
    # logit at the output layer (scaling EOS's row of a tied lm_head also moved its embedding).
    model = copy.deepcopy(policy.model)
    eos_bonus = torch.zeros(model.lm_head.out_features)
    eos_bonus[policy.eos_token_id] = 1e4
    model.lm_head.register_forward_hook(lambda _module, _inputs, logits: logits + eos_bonus)
    forced_policy = Policy(model, policy.tokenizer, "", "")
    with torch.no_grad():
        ids = torch.tensor([forced_policy.encode(PROMPTS[0])])
        assert int(model(input_ids=ids).logits[0, -1].argmax()) == policy.eos_token_id, "premise: EOS is the argmax"
    forced = forced_policy.sample(PROMPTS[:1], n=2, temperature=0.0, max_new_tokens=5)
    for s in forced:
        assert s.completion_token_ids == (policy.eos_token_id,) and s.finish_reason == "stop" and s.text == ""


def _per_row(policy: Policy, prompts, comps, temperature):
    """Logprobs and gradients with every row in its own call (no shared prompt pass)."""
    policy.model.zero_grad(set_to_none=True)
    rows = [policy.forward_logprobs([p], [c], temperature)[0][0] for p, c in zip(prompts, comps, strict=True)]
    sum(r.sum() for r in rows).backward()
    grads = {k: v.grad.clone() for k, v in policy.model.named_parameters() if v.grad is not None}
    return [r.detach() for r in rows], grads


@pytest.mark.parametrize("which", ["full", "lora"])
def test_shared_prompt_pass_equals_per_row_passes(policy, lora_policy, which):
    p = policy if which == "full" else lora_policy
    p.model.train()
    prompts = [p.encode(PROMPTS[i]) for i in (0, 0, 0, 1, 1, 2)]  # groups of 3, 2 and 1 rows
    comps = [[5, 6, 7, 0], [8], [9, 10], [11, 12, 13, 14, 15], [0], [16, 17]]
    p.model.zero_grad(set_to_none=True)
    batched, lengths = p.forward_logprobs(prompts, comps, [0.7] * 6)
    mask = torch.arange(batched.shape[1])[None, :] < lengths[:, None]
    (batched * mask).sum().backward()
    grads = {k: v.grad.clone() for k, v in p.model.named_parameters() if v.grad is not None}
    rows, row_grads = _per_row(p, prompts, comps, 0.7)
    assert lengths.tolist() == [4, 1, 2, 5, 1, 2] and batched.shape == (6, 5)
    for b, r in enumerate(rows):
        assert (batched[b, : len(r)] - r).abs().max() < 1e-5
    assert set(grads) == set(row_grads)
    scale = max(float(g.abs().max()) for g in row_grads.values())
    assert scale > 0, "premise: a non-zero gradient to compare (the tolerance is relative to it)"
    assert max(float((grads[k] - row_grads[k]).abs().max()) for k in grads) < 1e-5 * scale
    p.model.eval()


def test_shared_prompt_backward_is_bit_reproducible(lora_policy):
    p = lora_policy
    prompts = [p.encode(PROMPTS[i]) for i in (0, 0, 0, 0, 1, 1)]
    comps = [[5, 6, 7, 0], [8, 3], [9, 10], [11, 12, 13], [0], [16, 17]]
    runs = []
    for _ in range(2):
        p.model.zero_grad(set_to_none=True)
        logp, _ = p.forward_logprobs(prompts, comps, 1.0)
        logp.sum().backward()
        runs.append({k: v.grad.clone() for k, v in p.model.named_parameters() if v.grad is not None})
    assert runs[0] and all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_completion_logits_predict_each_token_from_its_prefix(policy):
    prompt, comp = policy.encode(PROMPTS[0]), [5, 6, 0]
    with torch.no_grad():
        logits = completion_logits(policy.model.eval(), [prompt, prompt], [comp, comp[:1]], policy.eos_token_id)
        full = policy.model(input_ids=torch.tensor([prompt + comp])).logits[0]
    assert logits.shape == (2, 3, full.shape[-1])
    assert (logits[0] - full[len(prompt) - 1 : len(prompt) + 2]).abs().max() < 1e-5
    assert (logits[1, 0] - full[len(prompt) - 1]).abs().max() < 1e-5


@torch.no_grad()
def test_prompt_pass_is_shared_only_without_dropout_or_ddp_wrapper(policy):
    model = copy.deepcopy(policy.model)
    model.train()
    assert _shareable(model)  # the tiny policy has no dropout: groups share their prompt pass
    with torch.enable_grad():
        assert _shareable(model)  # with grad too: _ShareRows' backward is reproducible
    model.config.attention_dropout = 0.1
    assert not _shareable(model)  # a shared pass would give the whole group one dropout draw
    model.eval()
    assert _shareable(model)

    class Wrapper(torch.nn.Module):  # the shape of DDP / FSDP: the model under ``.module``
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert not _shareable(Wrapper(model))


def test_lean_step_equals_the_forward_of_a_llama_model():
    """The other accepted architecture: a random tiny Llama (grouped KV heads, left padding)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    ids, mask = left_pad([[3, 4, 5, 6], [7, 8]], 0, torch.device("cpu"))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    use_cache=True)
        hf_cache = getattr(out, cache_name())
        lean = lean_decoder(model, copy.deepcopy(hf_cache), mask, mask.sum(-1), 6)
        assert lean is not None
        attn = torch.cat([mask, torch.ones(2, 2, dtype=torch.long)], dim=1)
        for t, token in enumerate(torch.tensor([[9, 10], [11, 12]]).T):
            ours = lean.step(token, t)
            theirs = model(input_ids=token[:, None], attention_mask=attn[:, : 4 + t + 1],
                           position_ids=mask.sum(-1, keepdim=True) + t, **{cache_name(): hf_cache}).logits[:, -1]
            assert (ours - theirs).abs().max() < 1e-5


def test_decoding_uses_no_deprecated_transformers_api():
    """Sampling (lean and HF decode loops) and the shared-prompt pass pass the KV cache under the
    installed transformers' own name: no FutureWarning from the forward, no logger notice on
    reading the output (transformers 5.x deprecates ``past_key_values`` for ``cache``)."""
    import logging
    import warnings

    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    hf_root = logging.getLogger("transformers")
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    hf_logging.warning_once.cache_clear()  # a notice already given earlier in the session counts again
    hf_root.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sample_tokens(model, [[1, 2, 3], [4, 5]], 2, 1.0, 1.0, 4, 0, 0)  # lean decode loop
            model.config._attn_implementation = "eager"  # lean declines: HF forward with the cache
            sample_tokens(model, [[1, 2, 3], [4, 5]], 2, 1.0, 1.0, 4, 0, 0)
            with torch.no_grad():  # shared prompt: prefill cache reused for the completions
                completion_logits(model, [[1, 2], [1, 2]], [[3, 4, 5], [6, 7]], 0)
    finally:
        hf_root.removeHandler(handler)
        hf_logging.set_verbosity(level)
    notices = [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    notices += [r.getMessage() for r in records]
    assert not [n for n in notices if "deprecated" in n.lower()], notices


def _head(k):
    """A ``shared_prefix`` that says every prompt shares its first ``k`` tokens."""
    return lambda ids: k


def test_shared_head_runs_once_and_matches_whole_prompts(lora_policy):
    p = lora_policy
    prompts = [p.encode(PROMPTS[0] + "2 + 3"), p.encode(PROMPTS[0] + "7 * 8 - 1"), p.encode(PROMPTS[0] + "9")]
    head = len(p.encode(PROMPTS[0])) - 2  # the three prompts agree on these tokens
    assert all(x[:head] == prompts[0][:head] for x in prompts)
    comps = [[5, 6, 7, 0], [8, 3], [9, 10, 11]]
    p.model.eval()
    with torch.no_grad():
        whole = completion_logits(p.model, prompts, comps, p.eos_token_id)
        split = completion_logits(p.model, prompts, comps, p.eos_token_id, _head(head))
        alone = completion_logits(p.model, prompts[1:2], comps[1:2], p.eos_token_id, _head(head))
    for b, c in enumerate(comps):  # the same numbers up to float32 rounding (padding positions aside)
        assert (whole[b, : len(c)] - split[b, : len(c)]).abs().max() < 1e-5
    assert torch.equal(alone, split[1:2, : alone.shape[1]])  # bit-equal whatever else is in the batch
    calls = []
    hook = p.model.get_base_model().model.embed_tokens.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[-1]))
    try:
        with torch.no_grad():
            completion_logits(p.model, prompts, comps, p.eos_token_id, _head(head))
    finally:
        hook.remove()
    assert calls.count(head) == 1  # the head once, then each prompt's tail and its completions
    assert sorted(calls[1:4]) == sorted(len(x) - head for x in prompts)


def test_shared_head_gradient_equals_whole_prompt_gradient(lora_policy):
    p = lora_policy
    prompts = [p.encode(PROMPTS[0] + "2 + 3"), p.encode(PROMPTS[0] + "4")] * 2
    comps = [[5, 6, 7, 0], [8, 3], [9, 10], [11, 0]]
    head = len(p.encode(PROMPTS[0])) - 2
    grads = []
    for shared in (None, _head(head), _head(head)):
        p.model.zero_grad(set_to_none=True)
        logits = completion_logits(p.model, prompts, comps, p.eos_token_id, shared)
        logits.float().logsumexp(-1).sum().backward()
        grads.append({k: v.grad.clone() for k, v in p.model.named_parameters() if v.grad is not None})
    assert grads[0] and set(grads[0]) == set(grads[1])
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-5), k
        assert torch.equal(grads[1][k], grads[2][k]), k  # and bit-reproducible


@torch.no_grad()
def test_sampler_logprobs_equal_learner_logprobs_with_a_shared_head(lora_policy):
    p = lora_policy
    prompts = [p.encode(PROMPTS[0] + "2 + 3"), p.encode(PROMPTS[0] + "7 * 8 - 1")]
    head = _head(len(p.encode(PROMPTS[0])) - 2)
    drawn = sample_tokens(p.model.eval(), prompts, 3, 1.0, 1.0, 8, p.eos_token_id, 0, shared_prefix=head)
    rows = [x for x in prompts for _ in range(3)]
    logits = completion_logits(p.model, rows, drawn.tokens, p.eos_token_id, head)
    for b, toks in enumerate(drawn.tokens):
        learner = torch.log_softmax(logits[b, : len(toks)].double(), -1).gather(-1, torch.tensor(toks)[:, None]).squeeze(-1)
        assert (learner - torch.tensor(drawn.logprobs[b], dtype=torch.float64)).abs().max() < 1e-6
