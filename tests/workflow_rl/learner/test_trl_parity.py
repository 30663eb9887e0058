"""Our GRPO loss and gradients equal TRL's ``GRPOTrainer`` on identical fixed completions, for every objective mode.

Uses TRL's own code (``_generate_and_score_completions`` with the fixed completions, then ``compute_loss``)
through the harness in ``benchmarks/trl_parity.py``, against our grpo maths and against the trainer's real
``grpo_step``. trl is a test dependency (the ``test`` extra), so this runs in ``.ci/run``; the importorskip
only guards a bare install.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

from workflow_rl.learner.config import TrainConfig  # noqa: E402
from workflow_rl.policy.model import Policy  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"
TOL = 1e-5


def _load(name: str):
    """A module of ``benchmarks/`` (not a package: loaded from its path)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def harness():
    """``benchmarks/trl_parity.py``."""
    return _load("trl_parity")


@pytest.fixture(scope="module")
def bench():
    """``benchmarks/bench_vs_trl.py``."""
    return _load("bench_vs_trl")


@pytest.fixture(scope="module")
def policy(tiny_cache) -> Policy:
    """The built-in tiny policy, float32 on CPU, in the session's tiny cache (shared with the
    learner's tests, so the suite builds it once)."""
    cache = tiny_cache
    return Policy.load("builtin:tiny", cache_dir=cache, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def results(harness, policy) -> dict[str, dict[str, float]]:
    """Parity of every mode of ``harness.modes()`` (one TRL run each, shared by the tests below)."""
    return {name: harness.parity(policy, harness.ParityCase(), mode) for name, mode in harness.modes().items()}


MODE_NAMES = ["trl defaults", "ours defaults", "grpo, plain k3, token_truncate 2", "dr_grpo, plain k3, token_truncate 2",
              "token_mask [0.8, 1.2]", "sequence_truncate [0.5, 1.5]", "gspo (sequence ratio), grpo",
              "off_policy_mask 0.05", "delta 1.06, eps_high 0.05", "top_entropy_quantile 0.2",
              "mask_truncated_completions", "no IS correction"]


def test_mode_list_is_the_harness_matrix(harness):
    assert list(harness.modes()) == MODE_NAMES


@pytest.mark.parametrize("name", MODE_NAMES)
def test_loss_and_grads_match_trl(results, name):
    """Loss, gradients of the maths and of the trainer's own step, advantages and truncation mask equal TRL's."""
    p = results[name]
    assert p["loss_abs"] < TOL
    assert p["grad_abs"] < TOL
    assert p["trainer_grad_abs"] < TOL
    assert p["adv_abs"] < TOL
    assert p["mask_abs"] == 0.0
    # not vacuous: real gradients, and ratios outside the trust region on both sides
    assert p["grad_max"] > 1e-2
    assert p["ratio_below"] > 0 and p["ratio_above"] > 0
    if "trl_is_masked_seq_frac" in p:  # our metric counts the sequences TRL's own IS ratio dropped
        assert p["is/masked_seq_frac"] == pytest.approx(p["trl_is_masked_seq_frac"])


def test_each_option_changes_the_objective(results):
    """Every mode does something on the parity batch (so its parity is evidence), and the step metrics say what."""
    base = results["trl defaults"]
    assert base["is/masked_seq_frac"] > 0  # sequence_mask at 3.0 drops a sequence
    assert results["token_mask [0.8, 1.2]"]["is/masked_token_frac"] > results["token_mask [0.8, 1.2]"][
        "is/masked_seq_frac"]  # tokens, not whole sequences
    assert results["ours defaults"]["is/masked_token_frac"] == 0 and results["ours defaults"]["is/weight_mean"] != 1
    assert results["off_policy_mask 0.05"]["off_policy/masked_seq_frac"] > 0
    assert 0 < results["top_entropy_quantile 0.2"]["entropy/kept_token_frac"] < 0.5
    assert results["mask_truncated_completions"]["truncated/masked_seq_frac"] > 0
    assert results["no IS correction"]["is/weight_mean"] == 1.0
    losses = [r["loss"] for r in results.values()]
    assert min(abs(a - b) for i, a in enumerate(losses) for b in losses[i + 1:]) > 1e-5  # all distinct


def test_delta_bites_on_the_parity_batch(harness, policy, results):
    """delta changes the loss against the same eps_high without it (a capped negative-advantage ratio)."""
    without = harness.parity(policy, harness.ParityCase(), {"epsilon_high": 0.05}, trainer=False)
    assert abs(without["loss"] - results["delta 1.06, eps_high 0.05"]["loss"]) > 1e-5


def test_defaults_in_the_matrix_are_the_real_ones(harness):
    """"trl defaults" is TRL's installed GRPOConfig (checked against what docs/learner.md states), and
    "ours defaults" is TrainConfig's."""
    trl = harness.trl_defaults()
    assert trl["loss_type"] == "dapo" and trl["use_bias_correction_kl"] is True
    assert trl["vllm_importance_sampling_mode"] == "sequence_mask" and trl["vllm_importance_sampling_clip_max"] == 3.0
    assert trl["importance_sampling_level"] == "token" and trl["epsilon_high"] is None and trl["beta"] == 0.0
    ours = harness.our_options(harness.modes()["ours defaults"] | {"beta": 0.0})
    defaults = TrainConfig(run="r")
    assert all(getattr(defaults, k) == v for k, v in ours.items()), ours


def test_search_samples_match_trl(harness, policy):
    """Samples without sampler logprobs (search samples; TRL without vLLM): no IS, off-policy mask from old."""
    for mode in ({}, {"off_policy_mask_threshold": 0.05, "loss_type": "dr_grpo"}):
        p = harness.parity(policy, harness.ParityCase(), mode, sampler_logprobs=False)
        assert p["loss_abs"] < TOL and p["grad_abs"] < TOL and p["trainer_grad_abs"] < TOL
        assert p["is/weight_mean"] == 1.0


def test_harness_detects_a_different_objective(harness, policy):
    """Plain k3 against TRL's default bias-corrected k3, or sequence_truncate against sequence_mask, give
    different gradients: the parity check compares something that can fail."""
    case = harness.ParityCase()
    plain = harness.parity(policy, case, {}, trainer=False, ours_mode={"use_bias_correction_kl": False})
    assert plain["grad_abs"] > 1e-4
    other_is = harness.parity(policy, case, {}, trainer=False,
                              ours_mode={"vllm_importance_sampling_mode": "sequence_truncate"})
    assert other_is["grad_abs"] > 1e-4


def test_parity_does_not_touch_the_callers_policy(harness, policy):
    """Both learners work on deep copies: the caller's weights and grads are unchanged."""
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    harness.parity(policy, harness.ParityCase(n_prompts=1, group_size=2), {})
    assert all(torch.equal(before[k], v) for k, v in policy.model.state_dict().items())
    assert all(p.grad is None for p in policy.model.parameters())


def test_step_reward_hand_values(bench):
    """The shared benchmark reward: fraction of characters in ``()=:``."""
    assert bench.step_reward("a=(b)") == pytest.approx(3 / 5)
    assert bench.step_reward("") == 0.0
    assert bench.step_reward("xyz") == 0.0


def test_rss_sampler_sees_an_allocation():
    """The benchmark's memory probe sees a 64 MiB tensor (which ``tracemalloc`` would miss); run in
    a fresh interpreter so the allocator cannot hand back pages this process already holds."""
    code = (
        "import importlib.util, sys, torch\n"
        f"spec = importlib.util.spec_from_file_location('bench_vs_trl', {str(BENCHMARKS / 'bench_vs_trl.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m)\n"
        "with m.RssSampler(interval=0.001) as rss:\n"
        "    block = torch.ones(16 * 2**20); block.add_(1); del block\n"
        "print(rss.peak - rss.baseline)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[-1]) >= 48 * 2**20
