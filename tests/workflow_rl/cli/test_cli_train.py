"""``workflow-rl train`` end to end on a stored calc search (CliRunner + the console entry point)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from storage.engine import open_db, session_scope
from storage.models import PolicyCheckpoint, TrainStep
from tests.helpers.learner import RUN, calc_search_db
from workflow_rl.cli import app, main


def test_train_command_trains_and_prints_checkpoint(tmp_path, tiny_cache):
    url, _ = calc_search_db(tmp_path, n_train=4, n_val=2)
    cache = tiny_cache
    out = tmp_path / "ckpt"
    result = CliRunner().invoke(app, [
        "--db", url, "train", "--run", RUN, "--max-steps", "2", "--batch-size", "8", "--micro-batch-size", "4",
        "--lr", "1e-3", "--cache-dir", cache, "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output and f"{out}" in result.output
    with session_scope(open_db(url)) as s:
        assert s.scalar(select(func.count()).select_from(TrainStep)) == 2
        ckpt = s.scalars(select(PolicyCheckpoint)).one()
    assert ckpt.path in result.output and (out / f"round-0-step-{ckpt.step}" / "policy.json").exists()


def test_train_errors_are_one_line(tmp_path, capsys):
    url, _ = calc_search_db(tmp_path, n_train=2, n_val=1)
    with pytest.raises(SystemExit) as exc:
        main(["--db", url, "train", "--run", "no-such-run"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: run 'no-such-run' not found") and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["--db", url, "train", "--run", RUN, "--min-group-size", "1"])
    assert "group of 1" in capsys.readouterr().err
