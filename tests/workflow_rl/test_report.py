"""``workflow-rl report``: PNGs and a markdown summary from the database alone."""

from __future__ import annotations

import pytest

from workflow_rl.cli import main
from workflow_rl.loop import run_loop
from workflow_rl.loop_config import LoopConfig
from workflow_rl.report import evaluations_to_reach, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_evaluations_to_reach_is_first_crossing():
    curve = [(10, 0.2), (20, 0.5), (30, 0.4), (40, 0.7)]
    assert evaluations_to_reach(curve, 0.5) == 20
    assert evaluations_to_reach(curve, 0.7) == 40
    assert evaluations_to_reach(curve, 0.1) == 10
    assert evaluations_to_reach(curve, 0.8) is None


@pytest.fixture(scope="module")
def loop_db(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    db = str(root / "r.db")
    config = LoopConfig(run="rep", rounds=1, search_budget=30, search_batch=10, children=2, train_problems=3,
                        group_size=2, top_workflows=2, extra_workflows=1, max_new_tokens=16, epochs=1,
                        batch_size=8, micro_batch_size=8, out_dir=str(root / "runs"), workers=1)
    run_loop(config, db)
    return db, root


def test_report_writes_pngs_and_summary(loop_db):
    db, root = loop_db
    report = write_report(db, "rep", root / "out")
    for png in (report.search_png, report.training_png):
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000
    text = report.summary_md.read_text()
    assert text == report.summary
    assert "# Report: rep" in text and "| 0 | rep/r0 |" in text


def test_report_cli(loop_db, capsys):
    db, root = loop_db
    main(["--db", db, "report", "--run", "rep", "--out", str(root / "cli")])
    assert (root / "cli" / "search.png").exists() and (root / "cli" / "training.png").exists()
    assert "rep/r0" in capsys.readouterr().out


def test_report_unknown_run_is_one_line_error(loop_db, capsys):
    db, root = loop_db
    with pytest.raises(SystemExit) as exit_info:
        main(["--db", db, "report", "--run", "nope", "--out", str(root / "x")])
    assert exit_info.value.code == 1
    assert "run 'nope' not found" in capsys.readouterr().err
