"""One-token decode steps for Llama-style models without ``transformers``' per-call machinery.

A Hugging Face forward of one token spends most of its time, on a small model, outside the
maths: output-capturing wrappers, mask construction from the 2-D mask, cache bookkeeping and a
``torch.cat`` per layer per step. :class:`LeanDecoder` runs the same layers (the model's own
modules: norms, projections (LoRA included), rotary embedding, MLP) on a preallocated KV buffer
with a ready-made boolean mask, so each step is just the layer arithmetic, as in HF's SDPA path
(``pack_gqa`` for grouped heads). Only architectures whose decoder layer is exactly
``x + attn(norm(x))``, ``x + mlp(norm(x))`` are accepted (:func:`lean_decoder` returns None
otherwise and the caller keeps the HF forward).
"""

from __future__ import annotations

import sys

import torch

SUPPORTED = {"Qwen2ForCausalLM": "Qwen2Attention", "LlamaForCausalLM": "LlamaAttention"}
"""Causal LM class -> its attention class; the decode step below is these models' forward."""


class LeanDecoder:
    """Decode state for ``rows`` sequences: KV buffers of ``capacity`` positions per layer."""

    def __init__(self, causal_lm, cache, prompt_mask: torch.Tensor, prompt_len: torch.Tensor, capacity: int):
        self.lm = causal_lm
        self.layers = list(causal_lm.model.layers)
        attn = self.layers[0].self_attn
        self.rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        self.head_dim, self.groups = attn.head_dim, attn.num_key_value_groups
        rows, width = prompt_mask.shape
        self.rows, self.width = rows, width
        self.keys, self.values = [], []
        for layer in cache.layers:  # the prompt's keys/values from the HF prefill, then room to grow
            k = layer.keys.new_empty(rows, layer.keys.shape[1], capacity, layer.keys.shape[3])
            v = layer.values.new_empty(rows, layer.values.shape[1], capacity, layer.values.shape[3])
            k[:, :, :width], v[:, :, :width] = layer.keys, layer.values
            self.keys.append(k)
            self.values.append(v)
        # True = attend (SDPA's boolean convention); decode positions are always visible.
        self.mask = torch.ones(rows, 1, 1, capacity, dtype=torch.bool, device=prompt_mask.device)
        self.mask[:, 0, 0, :width] = prompt_mask.bool()
        self.positions = prompt_len[:, None]
        self.rope_table = None
        if getattr(causal_lm.model.rotary_emb, "rope_type", None) == "default":
            # Position-independent frequencies: every step's cos/sin in one call, sliced per step
            # (elementwise, so bit-identical to computing them step by step).
            steps = self.positions + torch.arange(capacity - width, device=prompt_len.device)
            probe = self.keys[0].new_empty(rows, 1, 1) if self.keys else None
            self.rope_table = causal_lm.model.rotary_emb(probe, steps)

    def step(self, token: torch.Tensor, t: int) -> torch.Tensor:
        """Logits ``[rows, V]`` after feeding ``token`` (``[rows]``) as new token number ``t``."""
        lm, rows, hd = self.lm, self.rows, self.head_dim
        kv = self.width + t + 1
        hidden = lm.model.embed_tokens(token[:, None])
        if self.rope_table is not None:
            cos, sin = (table[:, t : t + 1] for table in self.rope_table)
        else:
            cos, sin = lm.model.rotary_emb(hidden, self.positions + t)
        mask = self.mask[..., :kv]
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(rows, 1, -1, hd).transpose(1, 2)
            k = attn.k_proj(x).view(rows, 1, -1, hd).transpose(1, 2)
            v = attn.v_proj(x).view(rows, 1, -1, hd).transpose(1, 2)
            q, k = self.rope(q, k, cos, sin)
            self.keys[i][:, :, kv - 1 : kv] = k
            self.values[i][:, :, kv - 1 : kv] = v
            if self.groups > 1:  # one query token: its heads become the queries of their KV head
                q = q.reshape(rows, -1, self.groups, hd)
            out = torch.nn.functional.scaled_dot_product_attention(
                q, self.keys[i][:, :, :kv], self.values[i][:, :, :kv], attn_mask=mask, scale=attn.scaling)
            out = out.reshape(rows, -1, 1, hd).transpose(1, 2).reshape(rows, 1, -1)
            hidden = hidden + attn.o_proj(out)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return lm.lm_head(lm.model.norm(hidden))[:, -1, :]


def lean_decoder(model, cache, prompt_mask: torch.Tensor, prompt_len: torch.Tensor, capacity: int):
    """A :class:`LeanDecoder` for ``model`` (a causal LM, or a peft model around one) continuing
    the HF prefill ``cache``; None when the model is not one whose forward it reproduces."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    attention = SUPPORTED.get(type(causal_lm).__name__)
    config = causal_lm.config
    if (attention is None or model.training or config._attn_implementation != "sdpa"
            or any(t != "full_attention" for t in getattr(config, "layer_types", None) or ())
            or getattr(config, "use_sliding_window", False)
            or type(causal_lm.model.layers[0].self_attn).__name__ != attention
            or len(getattr(cache, "layers", ())) != len(causal_lm.model.layers)):
        return None
    return LeanDecoder(causal_lm, cache, prompt_mask, prompt_len, capacity)
