"""``workflow-rl report``: PNGs and a markdown summary from the database alone."""

from __future__ import annotations

import asyncio

import pytest

from search.config import SearchConfig
from search.mutations import MutationProposer
from search.search import BenchmarkInfo, Search
from storage.engine import open_db, session_scope
from storage.models import Run, TrainStep
from workflow_rl.benchmarks import get_benchmark
from workflow_rl.cli import main
from workflow_rl.evaluation import BenchmarkEvaluator
from workflow_rl.report import evaluations_to_reach, search_curve, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_evaluations_to_reach_is_first_crossing():
    curve = [(10, 0.2), (20, 0.5), (30, 0.4), (40, 0.7)]
    assert evaluations_to_reach(curve, 0.5) == 20
    assert evaluations_to_reach(curve, 0.7) == 40
    assert evaluations_to_reach(curve, 0.1) == 10
    assert evaluations_to_reach(curve, 0.8) is None


@pytest.fixture(scope="module")
def loop_db(tmp_path_factory):
    """A real one-round search on calc (mutations), with train-step rows as the learner writes them."""
    root = tmp_path_factory.mktemp("report")
    db = str(root / "r.db")
    engine = open_db(db)
    bench = get_benchmark("calc")
    info = BenchmarkInfo(bench.name, bench.description, tuple(bench.operator_names), bench.seed_workflows())

    async def search():
        async with BenchmarkEvaluator(engine, bench, None, 1) as evaluator:
            config = SearchConfig(budget=60, batch_size=10, children=2, seed=0)
            return await Search(engine, config, info, evaluator, MutationProposer()).run("rep/r0")

    result = asyncio.run(search())
    with session_scope(engine) as s:
        s.add(Run(name="rep", benchmark="calc", kind="loop", status="done",
                  state={"rounds": {"0": {"phase": "done", "search_run": "rep/r0", "checkpoint_id": None}}}))
        for step in (1, 2, 3):
            s.add(TrainStep(run_id=result.run_id, round=0, step=step, metrics={
                "reward/mean": 0.25, "loss/kl": 0.0, "clip/low": 0.0, "clip/high": 0.1 * step,
                "mismatch/old_behavior_abs_mean": 1e-7, "mismatch/old_behavior_abs_max": 2e-7}))
    return db, root


def test_report_writes_pngs_and_summary(loop_db):
    db, root = loop_db
    report = write_report(db, "rep", root / "out")
    for png in (report.search_png, report.training_png):
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000
    text = report.summary_md.read_text()
    assert text == report.summary
    assert "# Report: rep" in text and "| 0 | rep/r0 |" in text
    engine = open_db(db)
    with session_scope(engine) as s:
        curve = search_curve(s, s.query(Run.id).filter(Run.name == "rep/r0").scalar())
    # 2 seeds + 2 children per expansion, each on a 10-problem batch: 10 evaluations per node
    assert [e for e, _ in curve] == [10 * (i + 1) for i in range(len(curve))]
    best = max(score for _, score in curve)
    assert f"| {best:.3f} |" in text and "| 3 | 0.250 |" in text  # best val; 3 steps, last reward


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
