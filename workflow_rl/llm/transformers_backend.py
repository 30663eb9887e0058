"""A local transformers model (CPU or GPU) as an :class:`~operators.base.LLMClient`.

It wraps :class:`workflow_rl.policy.model.Policy`, whose sampler returns the exact completion token ids
and the behavior logprobs ``log_softmax(logits / T)`` of each sampled token from the very forward
pass that sampled it (docs/design.md rules 1-2); there is no second sampler here.

Request mapping: chat ``messages`` go through the tokenizer's chat template when it has one
(else ``role: content`` lines and ``assistant:``); ``n``, ``temperature``, ``top_p``,
``max_tokens`` and ``seed`` (default 0) go to the sampler. ``stop`` strings are applied after
sampling: the text is cut before the first stop string, and ``token_ids`` / ``logprobs`` keep
the sampled tokens up to and including the one that completed it (finish reason ``stop``).

Cost: a local model has no API price, so ``cost`` is 0.0 unless a :class:`PriceTable` lists the
model (to charge compute); this is a documented zero, not an unknown price.
"""

from __future__ import annotations

import asyncio
from typing import Any

from operators.base import LLMChoice, LLMRequest, LLMResponse
from workflow_rl.llm.pricing import PriceTable


def render_messages(tokenizer: Any, messages: tuple[tuple[str, str], ...]) -> str:
    """Prompt text of chat ``messages``: the chat template when the tokenizer has one, else plain lines."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages],
                                             tokenize=False, add_generation_prompt=True)
    return "".join(f"{role}: {content}\n" for role, content in messages) + "assistant: "


def apply_stop(token_ids: tuple[int, ...], logprobs: tuple[float, ...], text: str,
               stop: tuple[str, ...], decode: Any) -> tuple[str, tuple[int, ...], tuple[float, ...], bool]:
    """Cut ``text`` before the earliest stop string; keep the tokens up to the one completing it."""
    hits = [text.find(s) for s in stop if s and s in text]
    if not hits:
        return text, token_ids, logprobs, False
    cut = min(hits)
    stop_end = min(text.find(s) + len(s) for s in stop if s and text.find(s) == cut)
    for k in range(1, len(token_ids) + 1):
        if len(decode(token_ids[:k])) >= stop_end:
            return text[:cut], token_ids[:k], logprobs[:k], True
    return text[:cut], token_ids, logprobs, True


class TransformersClient:
    """LLM client over a :class:`~workflow_rl.policy.model.Policy` (sampling runs in a worker thread)."""

    sampler = "transformers"

    def __init__(self, policy: Any, *, prices: PriceTable | None = None, model_name: str | None = None):
        """Wrap a loaded policy; ``model_name`` (default the policy's base model) names it in responses."""
        self.policy = policy
        self.prices = prices
        self.model = model_name or str(getattr(policy, "base_model", "transformers"))
        self._lock = asyncio.Lock()  # one generate at a time: the model is not re-entrant

    @classmethod
    def load(cls, name_or_path: str, **policy_kwargs: Any) -> TransformersClient:
        """Load a policy (``builtin:tiny``, a model directory, a checkpoint, an HF-cache id) and wrap it."""
        from workflow_rl.policy.model import Policy

        return cls(Policy.load(name_or_path, **policy_kwargs))

    def prompt_text(self, request: LLMRequest) -> str:
        """The exact text the model is conditioned on for ``request``."""
        if request.messages:
            return render_messages(self.policy.tokenizer, request.messages)
        return request.prompt or ""

    def _run(self, request: LLMRequest) -> LLMResponse:
        samples = self.policy.sample(
            [self.prompt_text(request)],
            n=request.n,
            temperature=request.temperature,
            top_p=request.top_p,
            max_new_tokens=request.max_tokens,
            seed=request.seed if request.seed is not None else 0,
        )
        choices = []
        for s in samples:
            text, ids, lps, stopped = apply_stop(s.completion_token_ids, s.behavior_logprobs,
                                                 s.text, request.stop, self.policy.decode_completion)
            choices.append(LLMChoice(
                text=text,
                token_ids=ids,
                logprobs=lps if request.logprobs else None,
                finish_reason="stop" if stopped else s.finish_reason,
            ))
        prompt_tokens = len(samples[0].prompt_token_ids) if samples else 0
        completion_tokens = sum(len(c.token_ids or ()) for c in choices)
        cost = 0.0 if self.prices is None else self.prices.cost(self.model, prompt_tokens, completion_tokens)
        return LLMResponse(choices=tuple(choices), prompt_tokens=prompt_tokens,
                           completion_tokens=completion_tokens, cost=cost, model=self.model)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Sample ``request.n`` completions with exact token ids and (when asked) behavior logprobs."""
        async with self._lock:
            return await asyncio.to_thread(self._run, request)
