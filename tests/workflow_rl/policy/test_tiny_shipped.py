"""The ``builtin:tiny`` model shipped inside the package is what its recipe builds.

The recipe (corpus, TinyConfig, build procedure) is hashed into a digest that the shipped
``tiny_config.json`` records, so a change to the recipe without `python -m workflow_rl.policy.tiny` fails
here. A full rebuild by ``python -m workflow_rl.policy.tiny`` under the installed versions must reproduce
the tokenizer and config byte for byte, and the weights bit for bit: on x86-64 the command pins the
AVX2 kernels (``BUILD_KERNELS``; an AVX-512 CPU's default kernels gave weights up to 0.18 away). Where
that pin does not apply (another architecture), float rounding may differ, so there the weights
must agree to 1e-3 and the model must write the same greedy completions.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from workflow_rl.policy.model import Policy
from workflow_rl.policy.tiny import MANIFEST, recipe, shipped_manifest, shipped_tiny

REBUILD = "rebuild it with `python -m workflow_rl.policy.tiny` under requirements/lock.txt and commit the files"


def test_shipped_model_is_the_current_recipe():
    manifest = shipped_manifest()
    assert manifest["recipe_digest"] == recipe()[3], f"the tiny recipe changed since it was shipped: {REBUILD}"
    files = {p.name for p in shipped_tiny().iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MANIFEST} <= files
    assert sum(p.stat().st_size for p in shipped_tiny().iterdir()) < 4_000_000  # it travels in the wheel


def test_builtin_tiny_loads_the_shipped_files():
    policy = Policy.load("builtin:tiny", device="cpu", dtype=torch.float32)
    assert policy.base_path == str(shipped_tiny())
    shipped = load_file(str(shipped_tiny() / "model.safetensors"))
    loaded = policy.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in shipped.items())


@pytest.mark.slow
def test_rebuild_reproduces_the_shipped_model(tmp_path):
    import tokenizers
    import transformers

    built_with = shipped_manifest()["built_with"]
    installed = {"torch": torch.__version__, "transformers": transformers.__version__,
                 "tokenizers": tokenizers.__version__}
    assert installed == built_with, f"installed {installed}, shipped model built with {built_with}: {REBUILD}"
    # The command, in a child process: the kernels it pins are chosen when torch starts.
    rebuilt = tmp_path / "rebuilt"
    done = subprocess.run([sys.executable, "-m", "workflow_rl.policy.tiny", "--out", str(rebuilt)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    shipped = shipped_tiny()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", MANIFEST):
        assert (rebuilt / name).read_bytes() == (shipped / name).read_bytes(), f"{name} differs: {REBUILD}"
    a, b = load_file(str(rebuilt / "model.safetensors")), load_file(str(shipped / "model.safetensors"))
    assert a.keys() == b.keys()
    if all(torch.equal(a[k], b[k]) for k in a):
        return  # bit-identical: the usual case with the locked versions on this kind of machine
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-3, f"rebuilt weights differ from the shipped ones by up to {worst:.2e}: {REBUILD}"
    prompts = [json.dumps(k) for k in sorted(a)[:4]]  # any fixed text: compare behaviour, not bits
    greedy = [Policy.load(str(d), device="cpu", dtype=torch.float32).sample(prompts, n=1, temperature=0.0,
                                                                            max_new_tokens=24)
              for d in (rebuilt, shipped)]
    assert [s.completion_token_ids for s in greedy[0]] == [s.completion_token_ids for s in greedy[1]]
