"""Policy: deterministic tiny build, sampling logprobs == teacher-forced logprobs, checkpoints."""

from __future__ import annotations

import hashlib

import pytest
import torch

from workflow_rl.errors import WorkflowRLError
from workflow_rl.policy.model import POLICY_META, LoraSpec, Policy
from workflow_rl.policy.prompts import (
    COMPLETION_MARKER,
    policy_prompt_for,
    render_operators,
    render_policy_prompt,
)
from workflow_rl.policy.tiny import TinyConfig, build_tiny


@pytest.fixture(scope="module")
def policy(tiny_cache):
    return Policy.load("builtin:tiny", cache_dir=tiny_cache)


def _digest(path):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


def test_tiny_build_is_deterministic_and_cached(tmp_path):
    corpus = ["async def solve(problem, ops):\n    return await ops.calculate(problem)\n"] * 3
    cfg = TinyConfig(vocab_size=300, num_hidden_layers=1, seed=3)
    a = build_tiny(tmp_path / "a", cfg, corpus)
    b = build_tiny(tmp_path / "b", cfg, corpus)
    assert a.name == b.name and _digest(a) == _digest(b)  # bit-identical weights and tokenizer
    assert build_tiny(tmp_path / "a", cfg, corpus) == a  # cached: no rebuild
    c = build_tiny(tmp_path / "a", TinyConfig(vocab_size=300, num_hidden_layers=1, seed=4), corpus)
    assert c != a and _digest(c)["model.safetensors"] != _digest(a)["model.safetensors"]
    assert not [p for p in (tmp_path / "a").iterdir() if ".tmp-" in p.name]  # temp dirs renamed or removed


def test_prompt_renders_operators_from_registry():
    ops = render_operators(["calculate", "mean"], brief=True)
    assert ops == "ops.calculate, ops.mean"
    full = render_operators(["calculate"])
    assert full.startswith("- ops.calculate(") and "arithmetic" in full
    prompt = render_policy_prompt("Do maths.", ops, "1+1", parent_code="async def solve(problem, ops):\n    return 1",
                                  failures=["2+2 gave 5"])
    assert prompt.endswith(COMPLETION_MARKER) and "### Parent workflow" in prompt and "- 2+2 gave 5" in prompt
    assert policy_prompt_for("Do maths.", ["calculate", "mean"], "1+1") == render_policy_prompt("Do maths.", ops, "1+1")
    with pytest.raises(KeyError):
        render_operators(["no_such_operator"])


def test_behavior_logprobs_match_teacher_forced_at_sampling_temperature(policy):
    prompts = ["### Problem\nWhat is 2 + 3?\n### Workflow\n", "a much longer prompt to force left padding " * 3]
    samples = policy.sample(prompts, n=3, temperature=0.7, max_new_tokens=24, seed=1)
    assert [s.prompt_index for s in samples] == [0, 0, 0, 1, 1, 1]
    again = policy.sample(prompts, n=3, temperature=0.7, max_new_tokens=24, seed=1)
    assert [s.completion_token_ids for s in samples] == [s.completion_token_ids for s in again]  # seeded
    args = ([list(s.prompt_token_ids) for s in samples], [list(s.completion_token_ids) for s in samples])
    scored = policy.score(*args, 0.7)
    gap = max(abs(a - b) for s, lp in zip(samples, scored, strict=True) for a, b in zip(s.behavior_logprobs, lp, strict=True))
    assert gap < 1e-5  # the sampler records them with the scorer's computation (0 measured)
    # and the temperature is applied at all (sampler and scorer both ignoring it would agree too):
    # at a temperature far from 0.7 the same tokens score differently, unless the policy were so
    # confident that no temperature matters (then this fails with the gap, not silently)
    wrong_t = policy.score(*args, 2.0)
    gap_t2 = max(abs(a - b) for s, lp in zip(samples, wrong_t, strict=True)
                 for a, b in zip(s.behavior_logprobs, lp, strict=True))
    assert gap_t2 > 0.05, f"logprobs at T = 0.7 and T = 2 differ by at most {gap_t2:.3g}"
    for s in samples:
        assert len(s.behavior_logprobs) == len(s.completion_token_ids)
        assert s.truncated == (s.completion_token_ids[-1] != policy.eos_token_id)
        assert policy.decode_completion(s.completion_token_ids) == s.text
        assert s.truncated or len(s.completion_token_ids) <= 24


def test_missing_policy_names_the_fix(tmp_path):
    with pytest.raises(WorkflowRLError, match="builtin:tiny"):
        Policy.load(str(tmp_path / "does-not-exist"))
    with pytest.raises(WorkflowRLError, match="download"):
        Policy.load("someone/not-a-cached-model")


def test_checkpoint_round_trip_and_incomplete_checkpoint_refused(policy, tmp_path):
    path = policy.save(tmp_path / "ckpt", trainer_state={"step": 7})
    loaded = Policy.load(str(path))
    a, b = policy.model.state_dict(), loaded.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert Policy.trainer_state(path) == {"step": 7} and loaded.base_model == "builtin:tiny"
    (path / POLICY_META).unlink()  # as if the process died before the last write
    with pytest.raises(WorkflowRLError, match="incomplete"):
        Policy.load(str(path))


def test_lora_checkpoint_round_trip(policy, tmp_path):
    lora = Policy.load(policy.base_path, lora=LoraSpec(r=2, alpha=4))
    names = [n for n, p in lora.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    path = lora.save(tmp_path / "lora")
    back = Policy.load(str(path))
    assert back.lora == LoraSpec(r=2, alpha=4)
    a, b = lora.model.state_dict(), back.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
