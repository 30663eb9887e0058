"""vLLM backend: logprob extraction everywhere; the engine itself only where vLLM and a GPU exist."""

from __future__ import annotations

import asyncio
import importlib.util
from types import SimpleNamespace

import pytest
import torch

from operators.base import LLMRequest
from workflow_rl.errors import WorkflowRLError
from workflow_rl.llm.vllm_backend import VLLMClient, sampled_logprobs

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_sampled_logprobs_picks_the_sampled_token():
    entries = [{5: SimpleNamespace(logprob=-0.25)}, {7: SimpleNamespace(logprob=-1.5), 2: SimpleNamespace(logprob=-0.1)}]
    assert sampled_logprobs([5, 7], entries) == (-0.25, -1.5)
    assert sampled_logprobs([5], None) is None
    with pytest.raises(WorkflowRLError, match="lack the sampled token"):
        sampled_logprobs([6], [{5: SimpleNamespace(logprob=-0.25)}])
    with pytest.raises(WorkflowRLError, match="2 logprob entries for 1 tokens"):
        sampled_logprobs([5], entries)


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed")
def test_missing_vllm_is_a_clear_error():
    with pytest.raises(WorkflowRLError, match=r"pip install 'workflow-rl\[vllm\]'"):
        VLLMClient("any-model")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_VLLM or not torch.cuda.is_available(), reason="needs vLLM and a CUDA GPU")
def test_vllm_processed_logprobs_match_log_softmax_at_temperature(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["async def solve(problem, ops): return 1"] * 8,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(tmp_path)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=fast.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=fast.eos_token_id, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(tmp_path)
    client = VLLMClient(str(tmp_path), dtype="float32", gpu_memory_utilization=0.2, enforce_eager=True)
    temperature = 0.7
    resp = asyncio.run(client.complete(LLMRequest(prompt="async def", n=2, temperature=temperature,
                                                  max_tokens=8, logprobs=True, seed=1)))
    prompt_ids = fast("async def", add_special_tokens=False)["input_ids"]
    for choice in resp.choices:
        ids = list(choice.token_ids)
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + ids])).logits[0]
        rows = logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(ids)]
        direct = torch.log_softmax(rows / temperature, -1).gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)
        assert torch.allclose(torch.tensor(choice.logprobs), direct, atol=2e-3)
