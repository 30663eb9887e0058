"""``workflow-rl loop --preset``: a named set of LoopConfig defaults that explicit options override."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from storage.engine import open_db
from workflow_rl.cli import app
from workflow_rl.errors import WorkflowRLError
from workflow_rl.loop.config import LoopConfig
from workflow_rl.loop.driver import _open_loop
from workflow_rl.loop.presets import PRESETS, SMOLLM2_CPU


def test_every_preset_builds_a_valid_config_and_names_only_fields():
    for preset in PRESETS.values():
        config = LoopConfig.from_preset(preset.name)
        assert config.preset == preset.name
        assert all(getattr(config, k) == v for k, v in preset.values.items())
    assert LoopConfig.from_preset(None) == LoopConfig()


def test_explicit_values_win_and_unknown_presets_name_the_known_ones():
    config = LoopConfig.from_preset("smollm2-cpu", lr=1e-3, rounds=1)
    assert (config.policy, config.lr, config.rounds) == ("builtin:smollm2", 1e-3, 1)
    assert config.group_size == SMOLLM2_CPU.values["group_size"]
    with pytest.raises(WorkflowRLError, match="smollm2-cpu"):
        LoopConfig.from_preset("no-such")
    with pytest.raises(WorkflowRLError, match="smollm2-cpu"):
        LoopConfig(preset="no-such")


def test_cli_preset_keeps_only_typed_options(monkeypatch, tmp_path):
    seen = []

    def fake_run_loop(config, db, *args):
        seen.append(config)
        raise WorkflowRLError("stop here")

    monkeypatch.setattr("workflow_rl.loop.driver.run_loop", fake_run_loop)
    db = f"sqlite:///{tmp_path / 'x.db'}"
    runner = CliRunner()
    runner.invoke(app, ["--db", db, "loop", "--preset", "smollm2-cpu", "--lr", "1e-3", "--rounds", "1"])
    runner.invoke(app, ["--db", db, "loop", "--rounds", "1"])
    runner.invoke(app, ["--db", db, "loop", "--preset", "smollm2-cpu", "--select-policy", "last", "--lr", "0",
                        "--skip-frozen"])
    with_preset, plain, control = seen
    assert with_preset == LoopConfig.from_preset("smollm2-cpu", lr=1e-3, rounds=1)
    assert plain == LoopConfig(rounds=1)  # no preset: the documented defaults, as before
    assert control == LoopConfig.from_preset("smollm2-cpu", select_policy="last", lr=0.0, skip_frozen=True)


def test_a_resumed_loop_keeps_its_preset(tmp_path):
    engine = open_db(f"sqlite:///{tmp_path / 'x.db'}")
    _open_loop(engine, LoopConfig.from_preset("smollm2-cpu", run="p", rounds=1, train_problems=3), "calc")
    said: list[str] = []
    _, resumed, _ = _open_loop(engine, LoopConfig(run="p", rounds=2), "calc", said.append)  # re-run without --preset
    assert resumed == LoopConfig.from_preset("smollm2-cpu", run="p", rounds=2, train_problems=3)
    # what this call asked and the stored run overrides is said, never dropped silently; rounds may change
    assert len(said) == 1 and "resuming it with its stored settings" in said[0]
    assert "train_problems=128 (stored 3)" in said[0] and "policy='builtin:tiny' (stored 'builtin:smollm2')" in said[0]
    assert "rounds=" not in said[0]
    said.clear()
    _open_loop(engine, LoopConfig.from_preset("smollm2-cpu", run="p", rounds=3, train_problems=3), "calc", said.append)
    assert said == []  # the same settings: nothing to say
    engine.dispose()
