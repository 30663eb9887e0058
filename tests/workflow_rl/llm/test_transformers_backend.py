"""Transformers backend on a tiny Qwen2 built in the test: logprobs equal log_softmax(logits / T)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from operators.base import LLMRequest, OpContext
from operators.registry import get_operators
from workflow_rl.llm.transformers_backend import TransformersClient, apply_stop
from workflow_rl.policy.model import Policy

CORPUS = ["async def solve(problem, ops):", "return await ops.custom(problem)", "hello world 123",
          "<answer>42</answer>", "the quick brown fox jumps over the lazy dog"] * 4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("tiny-qwen2")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=fast.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.eos_token_id, tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def client(tiny_dir):
    return TransformersClient(Policy.load(tiny_dir, device="cpu", dtype=torch.float32))


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_logprobs_equal_direct_log_softmax_over_sampled_tokens(client, temperature):
    req = LLMRequest(prompt="async def solve(problem, ops):", n=3, temperature=temperature, max_tokens=12,
                     logprobs=True, seed=5)
    resp = asyncio.run(client.complete(req))
    policy = client.policy
    prompt_ids = policy.encode(req.prompt)
    assert resp.prompt_tokens == len(prompt_ids) and len(resp.choices) == 3
    assert resp.completion_tokens == sum(len(c.token_ids) for c in resp.choices) and resp.cost == 0.0
    for choice in resp.choices:
        ids = list(choice.token_ids)
        assert len(choice.logprobs) == len(ids) > 0
        with torch.no_grad():
            logits = policy.model(torch.tensor([prompt_ids + ids])).logits[0].float()
        # The logit at position len(prompt) - 1 + j predicts completion token j.
        rows = logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(ids)]
        direct = torch.log_softmax(rows / temperature, dim=-1).gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)
        assert torch.allclose(torch.tensor(choice.logprobs), direct, atol=1e-5, rtol=0)
    # Same seed, same samples; logprobs are only returned when asked for.
    again = asyncio.run(client.complete(LLMRequest(prompt=req.prompt, n=3, temperature=temperature,
                                                   max_tokens=12, seed=5)))
    assert [c.token_ids for c in again.choices] == [c.token_ids for c in resp.choices]
    assert all(c.logprobs is None for c in again.choices)


def test_chat_messages_without_template_and_operator_use(client):
    assert client.prompt_text(LLMRequest(messages=(("user", "hi"),))) == "user: hi\nassistant: "
    ctx = OpContext(llm=client, extras={"llm_max_tokens": 8})
    text = asyncio.run(get_operators(["custom"])["custom"].fn(ctx, "Say", "hello"))
    assert isinstance(text, str) and ctx.usage.llm_calls == 1 and ctx.usage.completion_tokens > 0


def test_apply_stop_cuts_text_and_tokens():
    pieces = ["ab", "c<", "/a>", "zz"]

    def decode(ids):
        return "".join(pieces[i] for i in ids)

    text, ids, lps, stopped = apply_stop((0, 1, 2, 3), (-1.0, -2.0, -3.0, -4.0), "abc</a>zz", ("</a>",), decode)
    assert (text, ids, lps, stopped) == ("abc", (0, 1, 2), (-1.0, -2.0, -3.0), True)
    assert apply_stop((0,), (-1.0,), "ab", ("x",), decode) == ("ab", (0,), (-1.0,), False)
