"""The format warm start of a pretrained base: a few LoRA steps that teach it the reply format.

An instruct model asked the chat prompt (:class:`workflow_rl.policy.formats.ChatFormat`) mostly
writes prose or plain Python: SmolLM2-135M-Instruct wrote 0 valid programs in 16 on calc, so GRPO
saw no reward to learn from. The warm start is supervised, like ``builtin:tiny``'s
(:mod:`workflow_rl.policy.tiny_corpus`) and just as answer-free: each step pairs the chat prompt of
a RANDOM train problem with random type-checked operator pipelines built from the registry's
signatures, fenced as the prompt asks (``policy.completion_ids``: reply + end-of-turn). The
pipeline never depends on the problem, so the base learns to write valid programs of the
benchmark's operators, not which one fits which problem (that is left to RL); validation and test
problems and the benchmark's answers are never read.

Training is a LoRA adapter (rows of one prompt share its forward pass), merged into the weights
afterwards and saved as a plain model directory ``<cache_dir>/warm-<digest>`` with
:data:`~workflow_rl.policy.formats.FORMAT_FILE` (the operator rendering it was trained on, so every
later prompt of that base is rendered the same way) and :data:`MANIFEST` written last. The digest
covers everything that determines the result: the base's resolved directory (for ``builtin:smollm2``
and GGUF files it names the file's content hash), the :class:`WarmStartConfig`, the exact prompts
and replies, :data:`WARM_VERSION` and the torch/transformers versions. So a loop, an eval or a
benchmark asking for the same warm start reuses the directory; a half-written one is never used
(temporary sibling + rename).

Use it with ``LoopConfig.warm_start`` (``--warm-start N``; the ``smollm2-cpu`` preset sets it) or
``python -m workflow_rl.policy.warm_start --policy builtin:smollm2 --benchmark calc``, which prints
the directory (a ``--policy`` for ``eval``).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from workflow_rl.errors import WorkflowRLError
from workflow_rl.policy.formats import FORMAT_FILE, OPERATOR_DETAILS, ChatFormat
from workflow_rl.policy.prompts import PromptSpec
from workflow_rl.policy.tiny import default_cache_dir
from workflow_rl.policy.tiny_corpus import pipeline_programs

WARM_VERSION = 1
"""Part of the digest: bump when the procedure changes what a config produces."""

MANIFEST = "warm_start.json"
"""Written last into a warm-started directory: its presence means complete."""


@dataclass(frozen=True)
class WarmStartConfig:
    """How long and on what a base is warm-started (every field is part of the cache key)."""

    steps: int = 16  # optimizer steps (~35 s each for calc's short prompt on 2 loaded cores)
    prompts_per_step: int = 1  # distinct random train problems per step (each costs a prompt pass + backward)
    programs_per_prompt: int = 8  # random pipelines per prompt (they share its pass, so they are cheap)
    lr: float = 1e-3  # LoRA adapter lr: B starts at 0 and only a few dozen steps run
    lora_r: int = 8
    lora_alpha: int = 16
    seed: int = 0
    operators: str = "short"  # chat prompt's operator rendering (formats.OPERATOR_DETAILS)

    def __post_init__(self) -> None:
        """Validate; errors name the value and the fix."""
        for name in ("prompts_per_step", "programs_per_prompt", "lora_r", "lora_alpha"):
            if getattr(self, name) < 1:
                raise WorkflowRLError(f"warm start {name}={getattr(self, name)} must be >= 1")
        if self.steps < 0 or self.lr <= 0:
            raise WorkflowRLError(f"warm start steps={self.steps} must be >= 0 and lr={self.lr} > 0")
        if self.operators not in OPERATOR_DETAILS:
            raise WorkflowRLError(f"warm start operators={self.operators!r}: use one of {OPERATOR_DETAILS}")


def warm_start_pairs(problems: list[str], operator_names, config: WarmStartConfig) -> list[list[tuple[str, str]]]:
    """Per step, ``prompts_per_step x programs_per_prompt`` ``(problem, program)`` pairs.

    Problems are drawn at random from ``problems`` (train texts); programs round-robin over a
    seeded shuffle of every corpus pipeline, independently of the problem. Deterministic for a seed.
    """
    programs = pipeline_programs(operator_names)
    if not programs or not problems:
        raise WorkflowRLError("the warm start needs train problems and operators that make pipelines")
    rng = random.Random(f"warm-start:{config.seed}")
    order: list[str] = []
    steps = []
    for _ in range(config.steps):
        pairs = []
        for _ in range(config.prompts_per_step):
            problem = rng.choice(problems)
            for _ in range(config.programs_per_prompt):
                if not order:
                    order = programs[:]
                    rng.shuffle(order)
                pairs.append((problem, order.pop()))
        steps.append(pairs)
    return steps


def warm_started(base: str, bench, config: WarmStartConfig | None = None,
                 cache_dir: str | Path | None = None, say=None) -> Path:
    """The directory of ``base`` warm-started on benchmark ``bench`` (an object), building it once.

    ``base`` is anything :meth:`Policy.load` takes that has a chat template. ``say`` gets progress lines.
    """
    import torch
    import transformers

    from workflow_rl.policy.model import Policy

    config = config or WarmStartConfig()
    policy = Policy.load(base, cache_dir=cache_dir, device="cpu", dtype=torch.float32)
    if not policy.format.chat:
        raise WorkflowRLError(f"the format warm start is for chat models; {base!r} has no chat template")
    policy.format = ChatFormat(policy.tokenizer, config.operators)
    spec = PromptSpec.of(bench)
    problems = [p.text for p in bench.problems("train")]
    steps = warm_start_pairs(problems, bench.operator_names, config)
    texts = [[(policy.prompt(spec, problem), policy.format.reply(code)) for problem, code in pairs] for pairs in steps]
    key = [WARM_VERSION, policy.base_path, asdict(config), texts, torch.__version__, transformers.__version__]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"warm-{digest}"
    if (target / MANIFEST).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    if say:
        say(f"warm start of {base} on {bench.name}: {config.steps} LoRA steps into {target}")
    started = time.monotonic()
    losses = _train(policy, steps, spec, config)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        merged = policy.model.merge_and_unload()  # a plain model: the loop adds its own adapter
        merged.save_pretrained(tmp)
        policy.tokenizer.save_pretrained(tmp)
        (tmp / FORMAT_FILE).write_text(json.dumps({"operators": config.operators}) + "\n")
        manifest = {"base": base, "base_path": policy.base_path, "benchmark": bench.name, "config": asdict(config),
                    "digest": digest, "first_loss": losses[0] if losses else None,
                    "last_loss": losses[-1] if losses else None, "seconds": round(time.monotonic() - started)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same warm start first: theirs is identical
            if not (target / MANIFEST).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _train(policy, steps: list[list[tuple[str, str]]], spec: PromptSpec, config: WarmStartConfig) -> list[float]:
    """LoRA steps of mean token NLL of the fenced replies (prompts masked); returns the losses."""
    import torch

    from workflow_rl.policy.model import LoraSpec

    # A private RNG: the adapter's init is seeded and the caller's global RNG stays untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        policy.with_lora(LoraSpec(r=config.lora_r, alpha=config.lora_alpha))
    params = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    policy.model.train()
    losses = []
    for pairs in steps:
        prompt_ids = [policy.encode(policy.prompt(spec, problem)) for problem, _ in pairs]
        completion_ids = [policy.completion_ids(code) for _, code in pairs]
        logp, lengths = policy.forward_logprobs(prompt_ids, completion_ids, 1.0)
        mask = torch.arange(logp.shape[1])[None, :] < lengths[:, None]
        loss = -(logp * mask).sum() / mask.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    policy.model.eval()
    return losses


def main(argv: list[str] | None = None) -> None:
    """``python -m workflow_rl.policy.warm_start``: warm-start a base and print its directory."""
    import argparse

    from workflow_rl.tasks import get_benchmark

    defaults = WarmStartConfig()
    parser = argparse.ArgumentParser(prog="python -m workflow_rl.policy.warm_start", description=main.__doc__)
    parser.add_argument("--policy", default="builtin:smollm2", help="Base to warm-start (a chat model).")
    parser.add_argument("--benchmark", default="calc", help="Benchmark whose train problems and operators are used.")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="LoRA optimizer steps.")
    parser.add_argument("--cache-dir", default=None, help="Where the result is kept (default: the workflow-rl cache).")
    args = parser.parse_args(argv)
    start = time.monotonic()
    path = warm_started(args.policy, get_benchmark(args.benchmark), WarmStartConfig(steps=args.steps),
                        args.cache_dir, say=print)
    print(f"{path} ({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
