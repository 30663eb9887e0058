"""Our GRPO loss and gradients equal TRL's ``GRPOTrainer`` on identical fixed completions.

Uses TRL's own trainer loss (``GRPOTrainer.compute_loss``) through the harness in
``benchmarks/trl_parity.py``, against our grpo maths and against the trainer's real
``grpo_step``; skipped when trl (the ``bench`` extra) is not installed.
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

from workflow_rl.policy import Policy  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
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


@pytest.mark.parametrize("agg", ["token", "sequence", "constant"])
@pytest.mark.parametrize("tis", [False, True])
def test_loss_and_grads_match_trl(harness, policy, agg, tis):
    """token=dapo, sequence=grpo, constant=dr_grpo; beta>0 k3; eps 0.2/0.28; T=0.7; with/without TIS."""
    p = harness.parity(policy, harness.ParityCase(), agg, tis)
    assert p["loss_abs"] < TOL
    assert p["grad_abs"] < TOL
    assert p["adv_abs"] < TOL
    # not vacuous: real gradients, and ratios clipped on both sides of the trust region
    assert p["grad_max"] > 1e-2
    assert p["ratio_below"] > 0 and p["ratio_above"] > 0


@pytest.mark.parametrize(("agg", "tis"), [("token", True), ("token", False), ("sequence", True), ("constant", True)])
def test_trainer_step_grads_match_trl(harness, policy, agg, tis):
    """The gradients the trainer's own ``grpo_step`` hands its optimizer (reference forward, TIS
    from the samples' behavior logprobs, given old logprobs) equal TRL's."""
    t = harness.trainer_parity(policy, harness.ParityCase(), agg, tis)
    assert t["grad_abs"] < TOL
    assert t["adv_abs"] < TOL
    assert t["grad_max"] > 1e-2


def test_harness_detects_a_different_objective(harness, policy):
    """TRL's default KL (k3 times the ratio) and a different eps_high give different gradients:
    the parity check compares something that can fail."""
    case = harness.ParityCase()
    biased = harness.parity(policy, case, "token", False, use_bias_correction_kl=True)
    assert biased["grad_abs"] > 1e-4
    other_clip = harness.parity(policy, case, "token", False, epsilon_high=0.05)
    assert other_clip["grad_abs"] > 1e-4


def test_parity_does_not_touch_the_callers_policy(harness, policy):
    """Both learners work on deep copies: the caller's weights and grads are unchanged."""
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    harness.parity(policy, harness.ParityCase(n_prompts=1, group_size=2), "token", True)
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
