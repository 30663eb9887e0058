"""``eval --policy --best-of k --select runs``: execution filtering that never reads the answer."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from sqlalchemy import select

from storage.engine import open_db, session_scope
from storage.models import Evaluation, Generation, Run
from workflow_rl.benchmarks.base import BenchProblem
from workflow_rl.benchmarks.calc import CalcBenchmark
from workflow_rl.errors import WorkflowRLError
from workflow_rl.policy_eval import evaluate_policy


@dataclass
class WrongReferences(CalcBenchmark):
    """calc with every reference replaced: a selection that read answers would choose differently."""

    def problems(self, split: str) -> list[BenchProblem]:
        return [replace(p, reference="no such answer") for p in super().problems(split)]


def _chosen(db: str, run: str) -> dict[int, tuple[str, str | None]]:
    """problem id -> (chosen program, error kind of its stored run)."""
    engine = open_db(db)
    with session_scope(engine) as s:
        run_id = s.scalar(select(Run.id).where(Run.name == run))
        code = {g.problem_id: g.completion_text for g in s.scalars(select(Generation).where(Generation.run_id == run_id))}
        kind = {e.problem_id: e.error_kind for e in s.scalars(select(Evaluation).where(Evaluation.run_id == run_id))}
    return {pid: (code[pid], kind.get(pid)) for pid in code}


def _ran(kind: str | None) -> bool:
    return kind in (None, "wrong_answer")  # finished with an output (right or wrong)


def test_runs_selection_keeps_the_likeliest_program_that_runs(tmp_path, tiny_cache):
    bench = CalcBenchmark(test_size=8)
    db = str(tmp_path / "e.db")
    common = dict(best_of=6, max_new_tokens=48, workers=1, cache_dir=tiny_cache)
    top = evaluate_policy(db, "builtin:tiny", "test", bench, run="eval/top", **common)
    runs = evaluate_policy(db, "builtin:tiny", "test", bench, run="eval/runs", selection="runs", **common)
    by_logprob, by_runs = _chosen(db, top.run), _chosen(db, runs.run)
    assert len(by_runs) == 8 and runs.problems == 8
    # the same k samples, ranked the same way: where the likeliest valid program runs, it is kept;
    # elsewhere the choice moved to one that runs (if any of the k did)
    for pid, (code, kind) in by_logprob.items():
        if _ran(kind):
            assert by_runs[pid][0] == code
    assert sum(_ran(k) for _, k in by_runs.values()) > sum(_ran(k) for _, k in by_logprob.values())
    assert runs.accuracy >= top.accuracy
    # the answers are never read: wrong references give the very same choices
    other = str(tmp_path / "wrong.db")
    blind = evaluate_policy(other, "builtin:tiny", "test", WrongReferences(test_size=8), run="eval/runs",
                            selection="runs", **common)
    assert [c for c, _ in _chosen(other, blind.run).values()] == [c for c, _ in by_runs.values()]
    assert blind.accuracy == 0.0
    with pytest.raises(WorkflowRLError, match="'best': use logprob or runs"):
        evaluate_policy(db, "builtin:tiny", "test", bench, selection="best", **common)


def test_cli_select_runs_and_bad_select(tmp_path, tiny_cache, monkeypatch):
    from typer.testing import CliRunner

    from workflow_rl.cli import app

    monkeypatch.setenv("WORKFLOW_RL_CACHE", tiny_cache)
    db = str(tmp_path / "cli.db")
    runner = CliRunner()
    ok = runner.invoke(app, ["--db", db, "eval", "--policy", "builtin:tiny", "--best-of", "2", "--select", "runs",
                             "--split", "validation", "--workers", "1"])
    assert ok.exit_code == 0, ok.output
    assert "eval/policy-builtin:tiny/validation/k2-runs" in " ".join(ok.output.split())
    bad = runner.invoke(app, ["--db", db, "eval", "--policy", "builtin:tiny", "--best-of", "2", "--select", "best"])
    assert bad.exit_code == 1 and isinstance(bad.exception, WorkflowRLError)
    assert "(--select) 'best': use logprob or runs" in str(bad.exception)
