"""``workflow-rl report``: PNGs and a markdown summary from the database alone."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from search.config import SearchConfig
from search.proposers.mutations import MutationProposer
from search.search import BenchmarkInfo, Search
from storage.engine import open_db, session_scope
from storage.models import PolicyCheckpoint, Run, SearchNode, TrainStep, Workflow
from workflow_rl.cli import app, main
from workflow_rl.loop.evaluation import BenchmarkEvaluator
from workflow_rl.loop.report import (
    LEGEND,
    RoundRows,
    eval_table,
    evaluations_to_reach,
    legend,
    search_curve,
    train_panels,
    training_figure,
    tree_children,
    write_report,
)
from workflow_rl.tasks import get_benchmark
from workflow_rl.tasks.base import answer_check

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
            return await Search(engine, config, info, evaluator, MutationProposer(same_answer=answer_check(bench))).run("rep/r0")

    result = asyncio.run(search())
    with session_scope(engine) as s:
        loop = Run(name="rep", benchmark="calc", kind="loop", status="done", config={"beta": 0.0},
                   state={"rounds": {"0": {"phase": "done", "search_run": "rep/r0", "checkpoint_id": None}}})
        s.add(loop)
        s.flush()
        round_run = s.get(Run, result.run_id)
        round_run.parent_id, round_run.loop_round = loop.id, 0  # as the loop links its rounds
        # Two children as the policy writes them (the search here is mutation-only): a graft keeps
        # source 'mutation' and records its checkpoint, a rewrite is a 'policy' sample.
        ckpt = PolicyCheckpoint(run_id=result.run_id, path="-", base_model="builtin:tiny")
        s.add(ckpt)
        s.flush()
        children = s.scalars(select(Workflow).join(SearchNode, SearchNode.workflow_id == Workflow.id)
                             .where(SearchNode.run_id == result.run_id, SearchNode.parent_node_id.is_not(None))
                             .order_by(SearchNode.id)).all()
        children[0].checkpoint_id = ckpt.id
        children[1].source = "policy"
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
    assert report.training_png.exists()


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


def _runs_numbers(db) -> dict[str, list[str]]:
    """``workflow-rl runs`` as printed: the cells of each row by run name."""
    listed = CliRunner().invoke(app, ["runs", "--db", db])
    assert listed.exit_code == 0, listed.output
    return {cells[1]: cells for cells in (line.split() for line in listed.output.splitlines())
            if len(cells) > 5 and cells[0].isdigit()}


def test_summary_counts_agree_with_runs_and_say_what_they_count(loop_db):
    db, root = loop_db
    report = write_report(db, "rep", root / "agree")
    runs = _runs_numbers(db)
    search_table, stored_table = report.tables
    (_, name, workflows, evaluations, *_), = stored_table.rows
    # a round's cells: id, name, "round", "0", status, workflows, evaluations, best val, ...
    assert name == "rep/r0" and [str(workflows), str(evaluations)] == runs["rep/r0"][5:7]
    (_, best, _, search_evals, *_), = search_table.rows
    assert best == runs["rep/r0"][7] and best == runs["rep"][6]
    loop_workflows, loop_evaluations = runs["rep"][4:6]  # the loop's totals: its round's
    assert f"{loop_workflows} workflows, {loop_evaluations} evaluations" in report.totals
    assert f"; {search_evals} of them on validation)" in report.totals
    for header in (*search_table.headers, *stored_table.headers):  # every column is explained
        assert header == "round" or any(line.startswith(f"{header}:") or f"; {header}:" in line
                                        for line in LEGEND), header


def test_policy_children_are_counted_as_the_search_used_them(loop_db):
    """A graft (source mutation + checkpoint) and a rewrite (source policy) count; seeds never do."""
    db, root = loop_db
    engine = open_db(db)
    with session_scope(engine) as s:
        run_id = s.scalar(select(Run.id).where(Run.name == "rep/r0"))
        children, by_policy = tree_children(s, run_id)
        nodes = s.scalar(select(func.count()).select_from(SearchNode).where(SearchNode.run_id == run_id))
    assert by_policy == 2 and children == nodes - 2  # the two seeds are no children
    search_table, _ = write_report(db, "rep", root / "children").tables
    assert search_table.rows[0][5:7] == (children, 2)


def _steps(n: int, kl: float) -> list[dict[str, float]]:
    return [{"reward/mean": 0.2, "reward/batch_mean": 0.1 * i, "loss/kl": kl, "clip/low": 0.0, "clip/high": 0.01,
             "mismatch/old_behavior_abs_mean": 1e-7, "mismatch/old_behavior_abs_max": 2e-7} for i in range(n)]


def _rounds(kl: float) -> list[RoundRows]:
    return [RoundRows(r, f"x/r{r}", r + 1, [], 0, 0, _steps(3 + r, kl), None, None) for r in (0, 1)]


def test_training_figure_labels_rounds_and_metrics_and_drops_the_kl_panel_without_beta():
    fig = training_figure(_rounds(0.0), beta=0.0)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 3 and not any("KL" in t for t in titles)
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert labels and all("/" not in label for label in labels)  # readable, not reward/batch_mean
    assert "mean over the step's batch" in labels
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["round 0", "round 1"]
    kl_fig = training_figure(_rounds(0.01), beta=0.02)
    assert any("KL" in ax.get_title() for ax in kl_fig.axes) and len(kl_fig.axes) == 4
    unknown_beta = [title for title, _, _ in train_panels(_steps(2, 0.0), None)]
    assert len(unknown_beta) == 3 and not any("KL" in t for t in unknown_beta)  # beta unknown, KL flat zero
    assert len(train_panels(_steps(2, 0.5), None)) == 4  # beta unknown, KL measured
    assert train_panels([], 0.1) == []


def test_run_without_training_writes_no_training_png(loop_db):
    db, root = loop_db
    engine = open_db(db)
    with session_scope(engine) as s:
        s.add(Run(name="bare", benchmark="calc", kind="search", status="done"))
    report = write_report(db, "bare", root / "bare")
    assert report.training_png is None and not (root / "bare" / "training.png").exists()
    assert report.search_png.read_bytes()[:8] == PNG_MAGIC
    assert "no training.png" in report.summary


def test_report_cli_fits_80_columns(loop_db):
    db, root = loop_db
    proc = subprocess.run([sys.executable, "-c", "from workflow_rl.cli import main; main()", "report", "--run",
                           "rep", "--out", str(root / "narrow"), "--db", db], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "80"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "by policy" in proc.stdout and "best val:" in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80, proc.stdout


def test_policy_evaluations_table_and_its_legend():
    evaluated = eval_table([("eval/policy-3/test/k8", {"split": "test", "accuracy": 0.26, "cost": None,
                                                       "valid_fraction": 1.0})])
    assert evaluated.rows == (("eval/policy-3/test/k8", "test", "0.260", "-", "1.00"),)
    assert eval_table([]) is None
    lines = legend((evaluated,))
    assert len(lines) == 1 and lines[0].startswith("eval run:") and "accuracy:" in lines[0]
