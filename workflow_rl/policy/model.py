"""The policy: a causal LM + tokenizer (optionally with a LoRA adapter) that samples and scores.

``Policy.sample`` records, for every sampled token, its behavior logprob ``log_softmax(logits/T)``
under the weights that sampled it, at sampling time (docs/design.md rules 1-2), together with the exact
prompt and completion token ids. It computes them as ``Policy.score`` does (one teacher-forced pass
per prompt group, see :mod:`workflow_rl.policy.decode`), so a policy scoring its own samples
reproduces their behavior logprobs exactly when a group is scored together.

Sources: ``builtin:tiny`` (shipped, see :mod:`workflow_rl.policy.tiny`), ``builtin:smollm2`` or a
``.gguf`` file (dequantized once into a cached model directory, see :mod:`workflow_rl.policy.pretrained`),
a local model directory, a checkpoint written by :meth:`Policy.save`, or a model already in the
Hugging Face cache (never downloaded: ``local_files_only=True``).

The policy's prompt format (:mod:`workflow_rl.policy.formats`) follows its tokenizer: a chat
template gives the chat prompt, whose replies carry the program in a fenced block.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from workflow_rl.errors import WorkflowRLError
from workflow_rl.policy.decode import completion_logits, sample_tokens
from workflow_rl.policy.formats import prompt_format
from workflow_rl.policy.heap import bound_heap
from workflow_rl.policy.logprobs import token_logprobs
from workflow_rl.policy.pretrained import BUILTIN_SMOLLM2, resolve_pretrained
from workflow_rl.policy.tiny import BUILTIN_TINY, shipped_tiny

POLICY_META = "policy.json"
"""File naming a saved checkpoint's base model and adapter; written last, so its presence means complete."""

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapter shape (peft ``LoraConfig``)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LORA_TARGETS


@dataclass(frozen=True)
class PolicySample:
    """One sampled completion with everything the learner needs to train on it exactly."""

    prompt_index: int  # index into the ``prompts`` passed to ``sample``
    prompt_token_ids: tuple[int, ...]
    completion_token_ids: tuple[int, ...]  # includes the EOS when one was sampled
    behavior_logprobs: tuple[float, ...]  # one per completion token, at ``temperature``
    text: str  # decoded completion without the EOS
    program: str  # the workflow code in ``text`` (the policy's format decides; plain: ``text`` itself)
    finish_reason: str  # "stop" (EOS sampled) or "length" (hit max_new_tokens)
    temperature: float
    top_p: float

    @property
    def truncated(self) -> bool:
        """True when the completion hit ``max_new_tokens`` without an EOS."""
        return self.finish_reason == "length"


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_pretrained(name: str) -> bool:
    """Whether a base is a pretrained model (LoRA by default), i.e. anything but ``builtin:tiny``."""
    return name != BUILTIN_TINY


def _load_base(name: str, dtype: torch.dtype, cache_dir: str | Path | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bound_heap()  # every sampling and training pass after this frees its large blocks to the OS

    path = str(shipped_tiny()) if name == BUILTIN_TINY else resolve_pretrained(name, cache_dir) or name
    if path == name and not Path(name).exists() and ("/" not in name or name.startswith((".", "/"))):
        raise WorkflowRLError(
            f"policy {name!r} is neither a local directory nor a Hugging Face model id; pass --policy "
            f"{BUILTIN_TINY}, {BUILTIN_SMOLLM2}, a .gguf file, a model directory, or a checkpoint path"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except OSError as exc:
        raise WorkflowRLError(
            f"policy {name!r} is not available locally ({exc.__class__.__name__}); nothing is downloaded: "
            f"run `huggingface-cli download {name}` first, or use --policy {BUILTIN_TINY}"
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, path


class Policy:
    """A causal LM policy. Use :meth:`load`; ``model`` may be a peft model when ``lora`` is set."""

    def __init__(self, model, tokenizer, base_model: str, base_path: str, lora: LoraSpec | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.base_model = base_model  # the name the user gave (builtin:tiny, a path, an HF id)
        self.base_path = base_path  # the resolved directory of the base weights
        self.lora = lora
        # the one prompt/program format of this policy; the base directory may fix its operator rendering
        self.format = prompt_format(tokenizer, base_path)

    # ------------------------------------------------------------ loading / saving

    @classmethod
    def load(
        cls,
        name_or_path: str = BUILTIN_TINY,
        lora: LoraSpec | None = None,
        cache_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> Policy:
        """Load ``builtin:tiny``, ``builtin:smollm2``, a ``.gguf`` file, a model directory, an
        HF-cache id, or a :meth:`save` checkpoint.

        ``lora`` adds a fresh trainable adapter (ignored for a checkpoint that has one already).
        Defaults: CUDA + bf16 when available, else CPU + float32. ``cache_dir`` is where GGUF files
        are dequantized to (default :func:`workflow_rl.policy.tiny.default_cache_dir`).
        """
        device = torch.device(device) if device is not None else _device()
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        ckpt = Path(name_or_path)
        if (ckpt / POLICY_META).exists():
            meta = json.loads((ckpt / POLICY_META).read_text())
            if meta["lora"] is not None:
                from peft import PeftModel

                # Builtins and GGUF files by name: the package's directory moves with each install
                # and a GGUF's converted directory lives in this machine's cache.
                by_name = meta["base_model"].startswith("builtin:") or meta["base_model"].lower().endswith(".gguf")
                base = meta["base_model"] if by_name else meta["base_path"]
                model, tokenizer, base_path = _load_base(base, dtype, cache_dir)
                model = PeftModel.from_pretrained(model, str(ckpt / "model"), is_trainable=True)
                spec = LoraSpec(**{**meta["lora"], "target_modules": tuple(meta["lora"]["target_modules"])})
                return cls(model.to(device), tokenizer, meta["base_model"], base_path, spec)
            model, tokenizer, _ = _load_base(str(ckpt / "model"), dtype)
            return cls(model.to(device), tokenizer, meta["base_model"], meta["base_path"], None).with_lora(lora)
        if name_or_path != BUILTIN_TINY and ckpt.exists() and (ckpt / "model").exists():
            raise WorkflowRLError(f"checkpoint {ckpt} is incomplete (no {POLICY_META}); it was never finished")
        model, tokenizer, base_path = _load_base(name_or_path, dtype, cache_dir)
        return cls(model.to(device), tokenizer, name_or_path, base_path, None).with_lora(lora)

    def with_lora(self, lora: LoraSpec | None) -> Policy:
        """Wrap the model with a fresh peft LoRA adapter (no-op for None or an existing adapter)."""
        if lora is None or self.lora is not None:
            return self
        from peft import LoraConfig, get_peft_model

        present = {name.rsplit(".", 1)[-1] for name, _ in self.model.named_modules()}
        targets = [t for t in lora.target_modules if t in present]
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=targets, task_type="CAUSAL_LM")
        self.model = get_peft_model(self.model, config)
        self.lora = lora
        return self

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def eos_token_id(self) -> int:
        """End-of-sequence id: sampling stops there; it is part of the completion."""
        return int(self.tokenizer.eos_token_id)

    def save(self, path: str | Path, trainer_state: dict[str, Any] | None = None) -> Path:
        """Write adapter or full weights + tokenizer (+ ``trainer_state``) atomically to ``path``.

        Files go to a temporary sibling directory, are fsynced, ``policy.json`` is written last,
        and the directory is renamed into place; an existing ``path`` is replaced.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            self.model.save_pretrained(tmp / "model")
            self.tokenizer.save_pretrained(tmp / "model")
            if trainer_state is not None:
                torch.save(trainer_state, tmp / "trainer_state.pt")
            meta = {"base_model": self.base_model, "base_path": self.base_path,
                    "lora": None if self.lora is None else asdict(self.lora)}
            (tmp / POLICY_META).write_text(json.dumps(meta, indent=1))
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.rename(path, old)
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    @staticmethod
    def trainer_state(path: str | Path) -> dict[str, Any] | None:
        """The ``trainer_state`` saved with a checkpoint (optimizer, RNG, step), or None."""
        f = Path(path) / "trainer_state.pt"
        return torch.load(f, weights_only=False) if f.exists() else None

    # ------------------------------------------------------------ tokens

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt(self, spec, problem: str, parent_code: str | None = None, failures=None) -> str:
        """The policy prompt for ``problem`` in this policy's format: every sampler and the learner
        render prompts through here (``spec`` is a :class:`workflow_rl.policy.prompts.PromptSpec`)."""
        return self.format.prompt(spec, problem, parent_code, failures)

    def program(self, completion_text: str) -> str:
        """The workflow code of a completion (plain format: the completion; chat: its fenced block)."""
        return self.format.program(completion_text)

    def completion_ids(self, code: str) -> list[int]:
        """Token ids of a completion as the policy would emit ``code``: its reply text, then EOS."""
        return self.encode(self.format.reply(code)) + [self.eos_token_id]

    @property
    def shared_prefix(self):
        """The format's ``shared_prefix(ids)`` (a chat prompt's system message is run once per call, in
        sampling and training alike), or None (the plain format: each prompt whole)."""
        return getattr(self.format, "shared_prefix", None)

    def decode_completion(self, ids: list[int] | tuple[int, ...]) -> str:
        """Completion text of ``ids`` (a trailing EOS is dropped)."""
        ids = list(ids)
        if ids and ids[-1] == self.eos_token_id:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    # ------------------------------------------------------------ sampling and scoring

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        seed: int = 0,
    ) -> list[PolicySample]:
        """Sample ``n`` completions per prompt (batched, KV cache); prompt-major order.

        Behavior logprobs are ``log_softmax(logits / T)`` of the sampled tokens (at T = 1 for greedy
        ``temperature == 0``), recorded by the learner's teacher-forced computation once the rows
        are drawn (:func:`workflow_rl.policy.decode.sample_tokens`). ``top_p < 1`` restricts sampling to
        the nucleus but the recorded logprobs stay those of the full distribution at T, so such
        samples are not valid RL data (the dataset layer refuses them).
        """
        if temperature < 0 or not 0 < top_p <= 1:
            raise WorkflowRLError(f"invalid sampling temperature={temperature} top_p={top_p}")
        self.model.eval()
        prompt_ids = [self.encode(p) for p in prompts]
        drawn = sample_tokens(self.model, prompt_ids, n, temperature, top_p, max_new_tokens, self.eos_token_id, seed,
                              shared_prefix=self.shared_prefix)
        rows = [i for i in range(len(prompts)) for _ in range(n)]
        eos = self.eos_token_id
        samples = []
        for b, i in enumerate(rows):
            ids = tuple(drawn.tokens[b])
            stopped = bool(ids and ids[-1] == eos)
            text = self.decode_completion(ids)
            samples.append(PolicySample(
                prompt_index=i,
                prompt_token_ids=tuple(prompt_ids[i]),
                completion_token_ids=ids,
                behavior_logprobs=tuple(drawn.logprobs[b]),
                text=text,
                program=self.program(text),
                finish_reason="stop" if stopped else "length",
                temperature=float(temperature),
                top_p=float(top_p),
            ))
        return samples

    def forward_logprobs(
        self,
        prompt_ids: list[list[int]],
        completion_ids: list[list[int]],
        temperature: float | list[float],
        with_entropy: bool = False,
    ):
        """Teacher-forced ``[B, L_max]`` logprobs of the completion tokens (with grad).

        ``temperature`` is one value or one per row (samples drawn at different temperatures).
        Logits are computed at completion positions only (:func:`workflow_rl.policy.decode.completion_logits`,
        the sampler's layout; rows sharing a prompt share its pass) and go through the chunked
        selective log-softmax.
        Returns ``(logprobs, lengths)`` or ``(logprobs, entropy, lengths)``.
        """
        dev = self.device
        lengths = torch.tensor([len(c) for c in completion_ids])
        l_max = int(lengths.max()) if len(completion_ids) else 0
        rows = completion_logits(self.model, prompt_ids, completion_ids, self.eos_token_id, self.shared_prefix)
        targets = torch.tensor([list(c) + [self.eos_token_id] * (l_max - len(c)) for c in completion_ids],
                               dtype=torch.long, device=dev).view(len(completion_ids), l_max)
        if not isinstance(temperature, (int, float)) and len(set(temperature)) == 1 and temperature[0] > 0:
            temperature = float(temperature[0])  # one temperature: no [B, L, V] division up front
        if isinstance(temperature, (int, float)):
            result = token_logprobs(rows, targets, float(temperature), with_entropy=with_entropy)
        else:
            temps = torch.tensor(temperature, dtype=torch.float32, device=dev)
            if (temps <= 0).any():
                raise WorkflowRLError(f"temperatures {temperature} must be > 0 to compute logprobs")
            result = token_logprobs(rows.float() / temps[:, None, None], targets, 1.0, with_entropy=with_entropy)
        if with_entropy:
            return result[0], result[1], lengths
        return result, lengths

    @torch.no_grad()
    def score(
        self, prompt_ids: list[list[int]], completion_ids: list[list[int]], temperature: float
    ) -> list[list[float]]:
        """Teacher-forced per-token logprobs ``log_softmax(logits / T)`` of each completion."""
        self.model.eval()
        logp, lengths = self.forward_logprobs(prompt_ids, completion_ids, temperature)
        return [logp[b, : int(n)].float().cpu().tolist() for b, n in enumerate(lengths)]

