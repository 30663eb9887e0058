"""vLLM in-process (optional extra ``vllm``) as an :class:`~operators.base.LLMClient`.

vLLM is imported lazily, only when a :class:`VLLMClient` is built. The engine is created with
``logprobs_mode="processed_logprobs"``: by default vLLM returns raw (T = 1) logprobs, whereas
GRPO needs the logprobs of the distribution that was actually sampled, ``log_softmax(logits / T)``
(docs/design.md rule 1). Requests use ``logprobs=0`` (the sampled token only), ``top_p`` as given (RL
sampling uses 1), top-k left disabled at vLLM's own default (``0`` or ``-1`` depending on the
version) and no repetition penalty. A LoRA adapter directory is applied per request through
``LoRARequest``; :meth:`VLLMClient.set_lora` switches to a new checkpoint's adapter.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from operators.base import LLMChoice, LLMRequest, LLMResponse
from workflow_rl.errors import WorkflowRLError
from workflow_rl.llm.pricing import PriceTable
from workflow_rl.llm.transformers_backend import render_messages


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise WorkflowRLError(
            f"the vLLM backend needs the optional extra: pip install 'workflow-rl[vllm]' ({exc})"
        ) from None
    return vllm


def sampled_logprobs(token_ids: list[int], logprobs: list[dict[int, Any]] | None) -> tuple[float, ...] | None:
    """The logprob of each sampled token from vLLM's per-position ``{token_id: Logprob}`` dicts."""
    if logprobs is None:
        return None
    if len(logprobs) != len(token_ids):
        raise WorkflowRLError(f"vLLM returned {len(logprobs)} logprob entries for {len(token_ids)} tokens")
    out = []
    for token, entry in zip(token_ids, logprobs, strict=True):
        if token not in entry:
            raise WorkflowRLError(f"vLLM logprobs lack the sampled token {token}")
        value = entry[token]
        out.append(float(getattr(value, "logprob", value)))
    return tuple(out)


class VLLMClient:
    """LLM client over ``vllm.LLM`` (generation runs in a worker thread, one batch at a time)."""

    sampler = "vllm"

    def __init__(self, model: str, *, lora_path: str | None = None, max_lora_rank: int = 64,
                 prices: PriceTable | None = None, **engine_kwargs: Any):
        """Start an engine for ``model``; ``engine_kwargs`` go to ``vllm.LLM`` (e.g. gpu_memory_utilization)."""
        vllm = _import_vllm()
        engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        if engine_kwargs["logprobs_mode"] != "processed_logprobs":
            raise WorkflowRLError("the vLLM backend must run with logprobs_mode='processed_logprobs' (docs/design.md rule 1)")
        if lora_path is not None:
            engine_kwargs.setdefault("enable_lora", True)
            engine_kwargs.setdefault("max_lora_rank", max_lora_rank)
        self.model = model
        self.prices = prices
        self.llm = vllm.LLM(model=model, **engine_kwargs)
        self._lora: Any = None
        self._lora_counter = 0
        self._lock = threading.Lock()
        if lora_path is not None:
            self.set_lora(lora_path)

    def set_lora(self, path: str | None) -> None:
        """Use the LoRA adapter at ``path`` for the next requests (None: the base model)."""
        if path is None:
            self._lora = None
            return
        from vllm.lora.request import LoRARequest

        # A fresh integer id per adapter: vLLM caches adapters by id, so reusing one would keep old weights.
        self._lora_counter += 1
        self._lora = LoRARequest(f"adapter-{self._lora_counter}", self._lora_counter, path)

    def sampling_params(self, request: LLMRequest) -> Any:
        """``vllm.SamplingParams`` for ``request`` (sampled-token logprobs, no top-k, no penalties)."""
        vllm = _import_vllm()
        params = vllm.SamplingParams(
            n=request.n,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_tokens,
            stop=list(request.stop) or None,
            seed=request.seed,
            logprobs=0 if request.logprobs else None,
            repetition_penalty=1.0,
        )
        if getattr(params, "top_k", 0) > 0:  # the disabled value is 0 or -1 depending on the version
            raise WorkflowRLError(f"vLLM SamplingParams defaulted to top_k={params.top_k}; RL sampling needs it off")
        return params

    def _run(self, request: LLMRequest) -> LLMResponse:
        prompt = render_messages(self.llm.get_tokenizer(), request.messages) if request.messages else request.prompt
        if prompt is None:
            raise WorkflowRLError("LLMRequest needs messages or a prompt; both are empty")
        with self._lock:
            (out,) = self.llm.generate([prompt], self.sampling_params(request), lora_request=self._lora,
                                       use_tqdm=False)
        choices = []
        for c in out.outputs:
            ids = list(c.token_ids)
            choices.append(LLMChoice(
                text=c.text,
                token_ids=tuple(ids),
                logprobs=sampled_logprobs(ids, c.logprobs) if request.logprobs else None,
                finish_reason=c.finish_reason,
            ))
        prompt_tokens = len(out.prompt_token_ids or ())
        completion_tokens = sum(len(c.token_ids or ()) for c in choices)
        # Local GPU inference has no API price: 0.0 unless a price table charges for it.
        cost = 0.0 if self.prices is None else self.prices.cost(self.model, prompt_tokens, completion_tokens)
        return LLMResponse(choices=tuple(choices), prompt_tokens=prompt_tokens,
                           completion_tokens=completion_tokens, cost=cost, model=self.model)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Generate ``request.n`` completions with token ids and processed (at-T) logprobs."""
        return await asyncio.to_thread(self._run, request)
