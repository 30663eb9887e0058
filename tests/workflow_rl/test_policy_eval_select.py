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
    """calc with the references of ``wrong`` splits replaced: a selection that read those answers
    would choose differently."""

    wrong: tuple[str, ...] = ("train", "validation", "test")

    def problems(self, split: str) -> list[BenchProblem]:
        problems = super().problems(split)
        return [replace(p, reference="no such answer") for p in problems] if split in self.wrong else problems


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
    with pytest.raises(WorkflowRLError, match="'best': use logprob, runs, validated"):
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
    assert "(--select) 'best': use logprob, runs, validated" in str(bad.exception)
    capped = runner.invoke(app, ["--db", db, "eval", "--policy", "builtin:tiny", "--best-of", "2", "--select",
                                 "validated", "--validate-top", "1", "--workers", "1"])
    assert capped.exit_code == 0, capped.output
    assert "k2-validated-top1" in " ".join(capped.output.split())  # not the uncapped run's name
    stray = runner.invoke(app, ["--db", db, "eval", "--policy", "builtin:tiny", "--best-of", "2", "--validate-top", "1"])
    assert stray.exit_code == 1 and "only applies to selection 'validated'" in str(stray.exception)


def test_validated_selection_prefers_programs_right_on_validation(tmp_path, tiny_cache):
    """Among candidates that run on a test problem, ``validated`` keeps the one whose validation runs
    were most often right; it reads validation answers only (wrong *test* references change nothing)
    and is refused on the validation split."""
    bench = CalcBenchmark(test_size=8, validation_size=12)
    db = str(tmp_path / "v.db")
    common = dict(best_of=6, max_new_tokens=48, workers=1, cache_dir=tiny_cache)
    runs = evaluate_policy(db, "builtin:tiny", "test", bench, run="eval/runs", selection="runs", **common)
    validated = evaluate_policy(db, "builtin:tiny", "test", bench, run="eval/val", selection="validated", **common)
    by_runs, by_val = _chosen(db, runs.run), _chosen(db, validated.run)
    # a problem with a program that runs keeps one that runs (maybe another than the likeliest)
    for pid, (_, kind) in by_runs.items():
        assert _ran(by_val[pid][1]) == _ran(kind)
    from storage.models import Workflow

    engine = open_db(db)
    with session_scope(engine) as s:  # every program that ran was scored on the validation split
        run_id = s.scalar(select(Run.id).where(Run.name == "eval/val/validation"))
        rows = s.execute(select(Evaluation, Workflow.code).join(Workflow, Workflow.id == Evaluation.workflow_id)
                         .where(Evaluation.run_id == run_id)).all()
    counts: dict[str, list[float]] = {}
    for e, code in rows:
        right_ran = counts.setdefault(code, [0.0, 0.0])
        if _ran(e.error_kind):
            right_ran[0] += e.reward
            right_ran[1] += 1
    assert rows and len(rows) == 12 * len(counts)
    precision = {code: (right + 1) / (ran + 2) for code, (right, ran) in counts.items()}
    for pid, (code, kind) in by_runs.items():  # the likeliest program that runs was a candidate too
        if _ran(kind):
            assert precision[by_val[pid][0]] >= precision[code]
    other = str(tmp_path / "wrong-test.db")
    blind = evaluate_policy(other, "builtin:tiny", "test", WrongReferences(test_size=8, validation_size=12,
                                                                           wrong=("test",)),
                            run="eval/val", selection="validated", **common)
    assert [c for c, _ in _chosen(other, blind.run).values()] == [c for c, _ in by_val.values()]
    with pytest.raises(WorkflowRLError, match="'validated' ranks programs by their validation runs"):
        evaluate_policy(db, "builtin:tiny", "validation", bench, selection="validated", **common)


def test_validate_top_caps_the_validation_passes(tmp_path, tiny_cache):
    """``validate_top=1`` scores only each problem's likeliest program that ran, so it chooses as
    ``runs`` does; ``validate_top=2`` scores at most two per problem; bad values are refused."""
    bench = CalcBenchmark(test_size=8, validation_size=6)
    db = str(tmp_path / "top.db")
    common = dict(best_of=6, max_new_tokens=48, workers=1, cache_dir=tiny_cache)
    runs = evaluate_policy(db, "builtin:tiny", "test", bench, run="eval/runs", selection="runs", **common)
    top1 = evaluate_policy(db, "builtin:tiny", "test", bench, run="eval/top1", selection="validated",
                           validate_top=1, **common)
    top2 = evaluate_policy(db, "builtin:tiny", "test", bench, run="eval/top2", selection="validated",
                           validate_top=2, **common)
    every = evaluate_policy(db, "builtin:tiny", "test", bench, run="eval/all", selection="validated", **common)
    assert [c for c, _ in _chosen(db, top1.run).values()] == [c for c, _ in _chosen(db, runs.run).values()]
    from storage.models import Workflow

    engine = open_db(db)
    with session_scope(engine) as s:
        def scored(run: str) -> int:
            run_id = s.scalar(select(Run.id).where(Run.name == f"{run}/validation"))
            return len(s.scalars(select(Workflow.id).where(Workflow.run_id == run_id)).all())

        n1, n2, n_all = scored(top1.run), scored(top2.run), scored(every.run)
    ran = {c for c, k in _chosen(db, runs.run).values() if _ran(k)}
    assert n1 == len(ran)  # one pass per distinct program chosen by `runs`
    assert n1 <= n2 <= min(n_all, 2 * 8) and n1 < n_all  # the cap binds (more than one program ran somewhere)
    for bad, match in ((-1, "use 0"), (2, "only applies to selection 'validated'")):
        with pytest.raises(WorkflowRLError, match=match):
            evaluate_policy(db, "builtin:tiny", "test", bench, selection="validated" if bad < 0 else "runs",
                            validate_top=bad, **common)
