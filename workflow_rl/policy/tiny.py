"""The built-in ``builtin:tiny`` policy: a small Qwen2 model with a locally trained BPE tokenizer.

Everything runs on a CPU with no downloads. The tokenizer is a byte-level BPE trained on the
operator descriptions (from the registry), benchmark text and seed workflows, so that workflow
code is a few dozen tokens. The weights are seeded-random, then warm-started with LM steps on
"policy prompt of a random train problem + random type-checked pipeline" documents
(:mod:`workflow_rl.policy.tiny_corpus`), so the untrained policy writes valid, diverse programs but has
no idea which one fits which problem, as a pre-trained base LM would. The same seed and corpus give
bit-identical files; the result is cached under ``<cache_dir>/tiny-<hash>`` and written
atomically (temporary directory + rename), so a half-built model is never loaded.

``builtin:tiny`` itself is SHIPPED inside the package (``workflow_rl/policy/builtin_models/tiny``, about
2 MB), built once with the locked versions by ``python -m workflow_rl.policy.tiny``: a fresh machine loads
it in a second instead of building it for minutes, and every machine runs the same weights (a
build's floating-point result can differ with the torch/transformers version or the CPU's kernels;
the command pins the kernels, :data:`BUILD_KERNELS`).
The shipped ``tiny_config.json`` records the recipe's digest, and a test checks that it is the
digest of the current recipe, so a change to the corpus or config cannot silently go unshipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from workflow_rl.errors import WorkflowRLError

BUILTIN_TINY = "builtin:tiny"
"""The policy name that selects this model."""

EOS_TOKEN = "<|endoftext|>"
"""End-of-sequence token; also used as the pad token (masks come from lengths, docs/design.md rule 3)."""

# Code shapes workflows are made of, so the tokenizer has merges for them even before any
# benchmark or seed text exists. Not a training set: the model itself starts random.
_BASE_PATTERNS = '''async def solve(problem, ops):
    expr = await ops.extract_expression(problem)
    value = await ops.calculate(expr)
    return value
async def solve(problem, ops):
    answer = await ops.answer_generate(problem)
    return await ops.format_answer(problem, answer)
async def solve(problem, ops):
    candidates = []
    for _ in range(3):
        candidates.append(await ops.generate(problem))
    best = await ops.majority_vote(candidates)
    if best:
        return best
    return candidates[0]
async def solve(problem, ops):
    code = await ops.programmer(problem)
    result = await ops.run_python(code)
    return result.strip()
'''


@dataclass(frozen=True)
class TinyConfig:
    """Shape of the built-in tiny model (defaults train in seconds on a CPU)."""

    vocab_size: int = 2048  # BPE target size (the trainer may stop earlier on a small corpus)
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    seed: int = 0
    warm_start_steps: int = 300  # LM steps on the warm-start documents (0 = random weights)
    warm_start_lr: float = 2e-3
    warm_start_documents: int = 512  # random-problem + random-pipeline documents (tiny_corpus)
    warm_start_batch: int = 32  # documents per warm-start step (a seeded shuffle cycles through them)


BUILD_VERSION = 3
"""Part of the cache key: bump when the build procedure changes what a config produces
(3: tokenizer trained with the qwen2 split and the warm start uses it as loaded, see ``_build``)."""

QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
               r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
"""Pre-tokenizer split of transformers' Qwen2 tokenizer (digits one by one, newlines apart)."""

BUILTIN_OPERATOR_MODULES = ("operators.tools", "operators.llm_ops")
"""Modules whose operators' descriptions go into the tiny tokenizer's corpus."""


SHIPPED_TINY = Path(__file__).resolve().parent / "builtin_models" / "tiny"
"""Where the package ships the built ``builtin:tiny`` model (weights, tokenizer, ``tiny_config.json``)."""

MANIFEST = "tiny_config.json"
"""Written last by a build: the TinyConfig, the recipe digest and the versions that built it."""


def default_cache_dir() -> Path:
    """``$WORKFLOW_RL_CACHE`` or ``~/.cache/workflow-rl``: where built tiny models are kept."""
    return Path(os.environ.get("WORKFLOW_RL_CACHE", Path.home() / ".cache" / "workflow-rl"))


def tiny_corpus(
    benchmark: str | None = "calc", n_documents: int = 512, seed: int = 0,
) -> tuple[list[str], list[str]]:
    """``(tokenizer_texts, warm_start_documents)`` for the tiny model.

    Tokenizer texts: code shapes, operator descriptions (from the registry), the benchmark's
    description, problems, seed workflows and the pipeline corpus. Warm-start documents
    (:mod:`workflow_rl.policy.tiny_corpus`): the policy prompt of a RANDOM train problem followed by a
    RANDOM type-checked operator pipeline, so the base writes valid, diverse programs but knows
    nothing about which pipeline fits which problem (never an oracle, never validation/test
    problems). Parts that are not importable are skipped; the corpus is part of the cache key.
    """
    from operators.registry import describe_operators, get_operators
    from workflow_rl.policy.prompts import policy_prompt_for
    from workflow_rl.policy.tiny_corpus import pipeline_programs, warm_start_documents

    # Only the built-in operators: the corpus (and so the cache key) must not change when a
    # program or test registers operators of its own in this process.
    builtin = sorted(n for n, op in get_operators().items() if op.fn.__module__ in BUILTIN_OPERATOR_MODULES)
    texts = [_BASE_PATTERNS, describe_operators(builtin)]
    documents: list[str] = []
    bench = None
    if benchmark:
        try:
            from workflow_rl.tasks import get_benchmark

            bench = get_benchmark(benchmark)
        except (ImportError, KeyError, LookupError, ValueError, WorkflowRLError):
            bench = None
    if bench is not None:
        seeds = list(bench.seed_workflows().values())
        problems = [p.text for p in bench.problems("train")]
        texts += [bench.description, *seeds, *problems, *pipeline_programs(bench.operator_names)]

        def prompt_for(text: str) -> str:
            return policy_prompt_for(bench.description, bench.operator_names, text)

        texts.append(prompt_for(problems[0]) if problems else "")
        documents = warm_start_documents(prompt_for, problems, bench.operator_names, n_documents, seed)
    return [t for t in texts if t], documents


def _train_tokenizer(corpus: list[str], vocab_size: int):
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # The pipeline transformers gives a qwen2 tokenizer on load (NFC, its split regex, then bytes),
    # so merges are learned on exactly the pieces the loaded tokenizer will split text into.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)


def _warm_start(model, tokenizer, documents: list[str], config: TinyConfig) -> None:
    """A few full-batch LM steps on ``document + EOS`` (deterministic, CPU)."""
    import torch

    from workflow_rl.policy.prompts import COMPLETION_MARKER

    if not documents or config.warm_start_steps <= 0:
        return
    eos = tokenizer.eos_token_id
    rows = [tokenizer(d, add_special_tokens=False)["input_ids"] + [eos] for d in documents]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [eos] * (width - len(r)) for r in rows])
    attn = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    # Loss on the completion only (after the marker); pads out, the real EOS stays in.
    labels = ids.masked_fill(attn == 0, -100)
    for b, doc in enumerate(documents):
        prompt = doc[: doc.index(COMPLETION_MARKER) + len(COMPLETION_MARKER)] if COMPLETION_MARKER in doc else ""
        labels[b, : len(tokenizer(prompt, add_special_tokens=False)["input_ids"])] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.warm_start_lr)
    # Seeded mini-batches cycling through a fixed permutation (the caller forked the RNG).
    batch = max(1, min(config.warm_start_batch, len(documents)))
    perm = torch.randperm(len(documents))
    model.train()
    for step in range(config.warm_start_steps):
        start = (step * batch) % len(documents)
        rows_idx = perm[torch.arange(start, start + batch) % len(documents)]
        width_b = int(attn[rows_idx].sum(-1).max())
        loss = model(input_ids=ids[rows_idx, :width_b], attention_mask=attn[rows_idx, :width_b],
                     labels=labels[rows_idx, :width_b]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def _build(target: Path, config: TinyConfig, corpus: list[str], documents: list[str], digest: str) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    trained = _train_tokenizer(corpus, config.vocab_size)
    model_config = Qwen2Config(
        vocab_size=len(trained),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=trained.eos_token_id,
        eos_token_id=trained.eos_token_id,
        pad_token_id=trained.pad_token_id,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        # Warm-start with the tokenizer exactly as Policy.load will load it. transformers maps a
        # qwen2 config to its own tokenizer class, which keeps our vocabulary and merges but uses
        # Qwen2's pre-tokenizer; training with the in-memory tokenizer instead taught the model
        # token splits ("\n   " as one token) that the loaded tokenizer never produces, so code
        # encoded at train time (search samples, prompts) was off the model's own distribution.
        trained.save_pretrained(tmp)
        model_config.save_pretrained(tmp)
        tokenizer = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
        # A private RNG and one thread keep the build bit-for-bit deterministic and leave the
        # caller's global RNG untouched.
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                model = Qwen2ForCausalLM(model_config)
                _warm_start(model, tokenizer, documents, config)
        finally:
            torch.set_num_threads(threads)
        model.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps(_manifest(config, digest), indent=1) + "\n")
        for f in tmp.iterdir():  # fsync before the rename makes the directory visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / MANIFEST).exists():  # lost a race to a complete build: fine
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _manifest(config: TinyConfig, digest: str) -> dict:
    import tokenizers
    import torch
    import transformers

    return {**asdict(config), "recipe_digest": digest, "build_version": BUILD_VERSION,
            "built_with": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "tokenizers": tokenizers.__version__}}


def recipe(config: TinyConfig | None = None, corpus: list[str] | None = None) -> tuple[TinyConfig, list[str], list[str], str]:
    """``(config, corpus, documents, digest)`` of a tiny build; the digest names what it produces."""
    config = config or TinyConfig()
    corpus, documents = (tiny_corpus(n_documents=config.warm_start_documents, seed=config.seed)
                         if corpus is None else (corpus, []))
    digest = hashlib.sha256(json.dumps([BUILD_VERSION, asdict(config), corpus, documents]).encode()).hexdigest()[:16]
    return config, corpus, documents, digest


def build_tiny(
    cache_dir: str | Path | None = None,
    config: TinyConfig | None = None,
    corpus: list[str] | None = None,
) -> Path:
    """Return the directory of a tiny model built from ``config`` and ``corpus``, building it once.

    The directory holds ``config.json``, safetensors weights and the tokenizer files, loadable
    with ``from_pretrained(path, local_files_only=True)``. ``builtin:tiny`` does not call this: it
    loads :func:`shipped_tiny` (this is the recipe that made it, and what tests of the build use).
    """
    config, corpus, documents, digest = recipe(config, corpus)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"tiny-{digest}"
    if not (target / MANIFEST).exists():
        _build(target, config, corpus, documents, digest)
    return target


def shipped_tiny() -> Path:
    """The directory of the ``builtin:tiny`` model shipped inside the package."""
    if not (SHIPPED_TINY / MANIFEST).exists():
        raise WorkflowRLError(
            f"the built-in tiny model is missing from {SHIPPED_TINY} (a broken install?); reinstall "
            f"workflow-rl, or rebuild it with `python -m workflow_rl.policy.tiny`")
    return SHIPPED_TINY


def shipped_manifest() -> dict:
    """The shipped model's ``tiny_config.json``: its config, recipe digest and build versions."""
    return json.loads((shipped_tiny() / MANIFEST).read_text())


BUILD_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
"""The environment ``python -m workflow_rl.policy.tiny`` builds under on x86-64: the AVX2 kernels of torch,
MKL and oneDNN. By default torch picks its AVX-512 kernels on CPUs that have them, and a build there
(an AMD EPYC) came out up to 0.18 away from the shipped weights: training from scratch compounds the
kernels' different rounding. Under these variables the same CPU rebuilt the shipped files bit for bit.
The kernels are chosen when torch and MKL start, so they are set for a child process, not in-process."""


def _pinned_rebuild(argv: list[str]) -> int | None:
    """Re-run this command in a child process under :data:`BUILD_KERNELS` (its exit status), or
    ``None`` where that is not needed: not x86-64, or the variables are already set."""
    import platform
    import subprocess
    import sys

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    if all(os.environ.get(k) == v for k, v in BUILD_KERNELS.items()):
        return None
    return subprocess.run([sys.executable, "-m", "workflow_rl.policy.tiny", *argv],
                          env={**os.environ, **BUILD_KERNELS}, check=False).returncode


def main(argv: list[str] | None = None) -> None:
    """``python -m workflow_rl.policy.tiny [--out DIR]``: rebuild the shipped ``builtin:tiny`` model.

    Run it (under the locked versions, ``requirements/lock.txt``) after changing the tiny recipe:
    the corpus, :class:`TinyConfig` or the build procedure. It takes a few minutes on a CPU. On
    x86-64 it builds with :data:`BUILD_KERNELS` (re-running itself under them where they are not
    set), so a CPU with AVX-512 writes the same bits as one without (checked on one AMD EPYC).
    """
    import argparse
    import sys
    import time

    parser = argparse.ArgumentParser(prog="python -m workflow_rl.policy.tiny", description=main.__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(SHIPPED_TINY), help="Directory to (re)write (default: the package's).")
    args = list(sys.argv[1:] if argv is None else argv)
    out = Path(parser.parse_args(args).out)
    status = _pinned_rebuild(args)
    if status is not None:
        raise SystemExit(status)
    start = time.monotonic()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # transformers' "Writing model shards" bar says nothing here
    print(f"building the tiny model (a few minutes on a CPU) into {out}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        built = build_tiny(tmp)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for f in sorted(built.iterdir()):  # plain copies: the build's private temp modes stay behind
            shutil.copyfile(f, out / f.name)
    print(f"done in {time.monotonic() - start:.0f} s: digest {json.loads((out / MANIFEST).read_text())['recipe_digest']}")


if __name__ == "__main__":
    main()
