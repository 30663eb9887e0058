"""``eval --policy --best-of k --select runs``: execution filtering that never reads the answer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

import pytest
from sqlalchemy import select

from operators.registry import get_operators
from operators.runtime import Sandbox
from storage.engine import open_db, session_scope
from storage.models import Evaluation, Generation, Problem, Run
from tests.helpers.learner import scripted_sampler
from workflow_rl.errors import WorkflowRLError
from workflow_rl.learner.dataset import PromptSpec
from workflow_rl.loop.policy_eval import evaluate_policy
from workflow_rl.policy.model import Policy
from workflow_rl.tasks.base import BenchProblem
from workflow_rl.tasks.calc import CalcBenchmark


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


def _program(*lines: str) -> str:
    return "async def solve(problem, ops):\n" + "".join(f"    {line}\n" for line in lines)


BROKEN = _program("return await ops.median(")  # invalid: ranked after every valid program
CRASH = _program("return await ops.calculate('1/0')")  # valid, fails on every problem
WRONG = _program("return await ops.upper(problem)")  # runs on every problem, never right
BACKWARDS = _program("return await ops.reverse_text(problem)")  # runs, never right; only ever 4th likeliest
ROUTED = CalcBenchmark().routed_workflow()  # right on most problems; fails on held-out arithmetic


def _script(bench: CalcBenchmark, i: int) -> list[tuple[str, float]]:
    """The 6 samples (program, mean token logprob) "the policy" writes for test problem ``i``, by ``i % 4``:

    0: the likeliest valid program crashes (twice), the next is right;  1: the likeliest runs (wrong);
    2: the likeliest crashes, the next runs wrong, then a right one;     3: every valid program crashes.
    """
    right = bench.oracle_for(bench.problems("test")[i])
    return [
        [(BROKEN, -0.1), (CRASH, -0.2), (right, -0.3), (WRONG, -0.4), (ROUTED, -0.5), (CRASH, -0.2)],
        [(WRONG, -0.2), (BROKEN, -0.1), (CRASH, -0.3), (ROUTED, -0.4), (right, -0.5), (BACKWARDS, -0.6)],
        [(CRASH, -0.2), (WRONG, -0.3), (right, -0.4), (BROKEN, -0.1), (CRASH, -0.5), (CRASH, -0.6)],
        [(BROKEN, -0.1), (CRASH, -0.2), (CRASH, -0.3), (BROKEN, -0.4), (CRASH, -0.5), (CRASH, -0.6)],
    ][i % 4]


def _ran_in_rank_order(bench: CalcBenchmark) -> list[list[str]]:
    """Per test problem, its valid samples that run on it (finish with an output), likeliest first.

    Established here, outside the code under test: each program is run on each problem in the
    sandbox. The premises the tests are built on are checked on the way: CRASH never runs, WRONG
    always runs, each problem's oracle runs (ROUTED runs on some problems only, e.g. not on the
    held-out arithmetic phrasings)."""
    problems = bench.problems("test")
    codes = sorted({code for i in range(len(problems)) for code, _ in _script(bench, i) if code != BROKEN}
                   | {bench.oracle_for(p) for p in problems})

    async def go():
        async with Sandbox(get_operators(list(bench.operator_names)), workers=1) as box:
            return await box.run_many([(c, p.text) for c in codes for p in problems])

    results = iter(asyncio.run(go()))
    runs = {(c, i): r.ok and bool((r.output or "").strip()) for c in codes for i in range(len(problems))
            for r in [next(results)]}
    assert not any(runs[CRASH, i] for i in range(len(problems))), "premise: CRASH fails on every problem"
    assert all(runs[WRONG, i] and runs[bench.oracle_for(p), i] for i, p in enumerate(problems)), \
        "premise: WRONG and each problem's oracle run on it"
    out = []
    for i in range(len(problems)):
        ranked = sorted((x for x in _script(bench, i) if x[0] != BROKEN), key=lambda x: -x[1])
        out.append([code for code, _ in ranked if runs[code, i]])
    return out


@pytest.fixture
def scripted(monkeypatch):
    """``Policy.sample`` (the model call) returns ``_script``'s samples for each test problem prompt."""
    def install(bench: CalcBenchmark) -> None:
        spec = PromptSpec(bench.description, tuple(bench.operator_names))
        index = {spec.render(p.text): i for i, p in enumerate(bench.problems("test"))}

        def script(prompt: str, n: int, temperature: float):
            assert (n, temperature) == (6, 1.0) and prompt in index, "not a best-of-6 test prompt"
            return _script(bench, index[prompt])

        def sample(self, *args, **kw):
            return scripted_sampler(self, script)(*args, **kw)

        monkeypatch.setattr(Policy, "sample", sample)

    return install


def _by_problem(bench: CalcBenchmark, db: str, run: str) -> list[tuple[str, str | None]]:
    """``_chosen`` in the order of the test problems."""
    engine = open_db(db)
    with session_scope(engine) as s:
        ids = dict(s.execute(select(Problem.key, Problem.id).where(Problem.benchmark == bench.name)).all())
    chosen = _chosen(db, run)
    return [chosen[ids[p.key]] for p in bench.problems("test")]


def test_runs_selection_keeps_the_likeliest_program_that_runs(tmp_path, tiny_cache, scripted):
    bench = CalcBenchmark(test_size=8)
    scripted(bench)
    db = str(tmp_path / "e.db")
    common = dict(best_of=6, max_new_tokens=48, workers=1, cache_dir=tiny_cache, with_greedy=False)
    top = evaluate_policy(db, "builtin:tiny", "test", bench, run="eval/top", **common)
    runs = evaluate_policy(db, "builtin:tiny", "test", bench, run="eval/runs", selection="runs", **common)
    by_logprob, by_runs = _by_problem(bench, db, top.run), _by_problem(bench, db, runs.run)
    assert runs.problems == 8
    rights = [bench.oracle_for(p) for p in bench.problems("test")]
    ran = _ran_in_rank_order(bench)  # checks the premises: CRASH crashes, WRONG and the oracles run
    # logprob: the likeliest *valid* program (BROKEN is likelier still); it crashes except on 1 mod 4
    assert [c for c, _ in by_logprob] == [WRONG if i % 4 == 1 else CRASH for i in range(8)]
    assert [_ran(k) for _, k in by_logprob] == [i % 4 == 1 for i in range(8)]
    # runs: the same samples in the same order, the first that runs (past two crashes on 0 mod 4);
    # where none runs, the likeliest valid one
    assert [c for c, _ in by_runs] == [[rights[i], WRONG, WRONG, CRASH][i % 4] for i in range(8)]
    assert [c for c, _ in by_runs] == [r[0] if r else CRASH for r in ran]
    assert [k for _, k in by_runs] == [[None, "wrong_answer", "wrong_answer", by_logprob[i][1]][i % 4]
                                       for i in range(8)]
    assert (top.accuracy, runs.accuracy) == (0.0, 2 / 8)
    # the answers are never read: wrong references give the very same choices
    other = str(tmp_path / "wrong.db")
    blind = evaluate_policy(other, "builtin:tiny", "test", WrongReferences(test_size=8), run="eval/runs",
                            selection="runs", **common)
    assert [c for c, _ in _by_problem(bench, other, blind.run)] == [c for c, _ in by_runs]
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
                             "--no-greedy", "--split", "validation", "--workers", "1"])
    assert ok.exit_code == 0, ok.output
    assert "eval/policy-builtin:tiny/validation/k2-runs'" in " ".join(ok.output.split())
    bad = runner.invoke(app, ["--db", db, "eval", "--policy", "builtin:tiny", "--best-of", "2", "--select", "best"])
    assert bad.exit_code == 1 and isinstance(bad.exception, WorkflowRLError)
    assert "(--select) 'best': use logprob, runs, validated" in str(bad.exception)
    capped = runner.invoke(app, ["--db", db, "eval", "--policy", "builtin:tiny", "--best-of", "2", "--select",
                                 "validated", "--validate-top", "1", "--workers", "1"])
    assert capped.exit_code == 0, capped.output
    assert "k2-validated-top1-greedy" in " ".join(capped.output.split())  # not the uncapped run's name
    stray = runner.invoke(app, ["--db", db, "eval", "--policy", "builtin:tiny", "--best-of", "2", "--validate-top", "1"])
    assert stray.exit_code == 1 and "only applies to selection 'validated'" in str(stray.exception)
    both = runner.invoke(app, ["--db", db, "eval", "--policy", "builtin:tiny", "--best-of", "2", "--select", "runs",
                               "--split", "validation", "--workers", "1"])  # with the greedy program by default
    assert both.exit_code == 0, both.output
    assert "k2-runs-greedy" in " ".join(both.output.split())
    alone = runner.invoke(app, ["--db", db, "eval", "--policy", "builtin:tiny", "--with-greedy"])
    assert alone.exit_code == 1 and "--best-of 2 or more" in str(alone.exception)


def test_validated_selection_prefers_programs_right_on_validation(tmp_path, tiny_cache, scripted):
    """Among candidates that run on a test problem, ``validated`` keeps the one whose validation runs
    were most often right; it reads validation answers only (wrong *test* references change nothing)
    and is refused on the validation split."""
    bench = CalcBenchmark(test_size=8, validation_size=12)
    scripted(bench)
    db = str(tmp_path / "v.db")
    common = dict(best_of=6, max_new_tokens=48, workers=1, cache_dir=tiny_cache, with_greedy=False)
    runs = evaluate_policy(db, "builtin:tiny", "test", bench, run="eval/runs", selection="runs", **common)
    validated = evaluate_policy(db, "builtin:tiny", "test", bench, run="eval/val", selection="validated", **common)
    by_runs, by_val = _by_problem(bench, db, runs.run), _by_problem(bench, db, validated.run)
    from storage.models import Workflow

    engine = open_db(db)
    with session_scope(engine) as s:  # every program that ran was scored on the validation split
        val_run = s.scalar(select(Run).where(Run.name == "eval/val/validation"))
        run_id = val_run.id
        assert val_run.status == "done"  # the validation passes are complete, not left "running"
        rows = s.execute(select(Evaluation, Workflow.code).join(Workflow, Workflow.id == Evaluation.workflow_id)
                         .where(Evaluation.run_id == run_id)).all()
    counts: dict[str, list[float]] = {}
    for e, code in rows:
        right_ran = counts.setdefault(code, [0.0, 0.0])
        if _ran(e.error_kind):
            right_ran[0] += e.reward
            right_ran[1] += 1
    ran = _ran_in_rank_order(bench)
    assert set(counts) == {c for r in ran for c in r} and len(rows) == 12 * len(counts)  # CRASH never scored
    precision = {code: (right + 1) / (n + 2) for code, (right, n) in counts.items()}
    assert precision[WRONG] == 1 / 14 and precision[ROUTED] > precision[WRONG], precision  # the premise
    for i in range(8):  # the best validation precision among those that ran (rank breaks ties)
        best = max(ran[i], key=lambda c: precision[c], default=by_runs[i][0])
        assert by_val[i][0] == best and _ran(by_val[i][1]) == _ran(by_runs[i][1])
    assert by_val[1][0] != by_runs[1][0] == WRONG  # where the likeliest that runs is wrong, it moved
    other = str(tmp_path / "wrong-test.db")
    blind = evaluate_policy(other, "builtin:tiny", "test", WrongReferences(test_size=8, validation_size=12,
                                                                           wrong=("test",)),
                            run="eval/val", selection="validated", **common)
    assert [c for c, _ in _by_problem(bench, other, blind.run)] == [c for c, _ in by_val]
    with pytest.raises(WorkflowRLError, match="'validated' ranks programs by their validation runs"):
        evaluate_policy(db, "builtin:tiny", "validation", bench, selection="validated", **common)


def test_validate_top_caps_the_validation_passes(tmp_path, tiny_cache, scripted):
    """``validate_top=1`` scores only each problem's likeliest program that ran, so it chooses as
    ``runs`` does; ``validate_top=2`` scores at most two per problem; bad values are refused."""
    bench = CalcBenchmark(test_size=8, validation_size=6)
    scripted(bench)
    db = str(tmp_path / "top.db")
    common = dict(best_of=6, max_new_tokens=48, workers=1, cache_dir=tiny_cache, with_greedy=False)
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
        def scored(run: str) -> set[str]:
            run_id = s.scalar(select(Run.id).where(Run.name == f"{run}/validation"))
            return set(s.scalars(select(Workflow.code).where(Workflow.run_id == run_id)))

        got = [scored(r.run) for r in (top1, top2, every)]
    ran = _ran_in_rank_order(bench)
    expected = [{c for r in ran for c in r[:top]} for top in (1, 2, 6)]
    assert len(expected[0]) < len(expected[1]) < len(expected[2]), "premise: each cap binds"
    assert got == expected  # one validation pass per distinct program among each problem's top N that ran
    for bad, match in ((-1, "use 0"), (2, "only applies to selection 'validated'")):
        with pytest.raises(WorkflowRLError, match=match):
            evaluate_policy(db, "builtin:tiny", "test", bench, selection="validated" if bad < 0 else "runs",
                            validate_top=bad, **common)


def test_with_greedy_makes_the_greedy_program_a_candidate(tmp_path, tiny_cache, monkeypatch):
    """``with_greedy``: best-of-k samples k - 1 programs and adds the greedy one, which a sample then
    replaces only where the selection prefers it; without it, the greedy program is not a candidate."""
    bench = CalcBenchmark(test_size=4, validation_size=6)
    calls: list = []

    def script(prompt: str, n: int, temperature: float):
        if temperature == 0.0:  # the greedy program: less likely per token than the samples
            return [(ROUTED, -0.3)] * n
        return [(CRASH, -0.1), (WRONG, -0.2), (BACKWARDS, -0.4)][:n]

    monkeypatch.setattr(Policy, "sample", lambda self, *a, **kw: scripted_sampler(self, script, calls)(*a, **kw))
    db = str(tmp_path / "g.db")
    common = dict(max_new_tokens=48, workers=1, cache_dir=tiny_cache, selection="validated")
    greedy = evaluate_policy(db, "builtin:tiny", "test", bench, best_of=1, max_new_tokens=48, workers=1,
                             cache_dir=tiny_cache)
    without = evaluate_policy(db, "builtin:tiny", "test", bench, best_of=3, with_greedy=False, **common)
    calls.clear()
    with_greedy = evaluate_policy(db, "builtin:tiny", "test", bench, best_of=3, **common)  # the default for k > 1
    assert sorted((n, t) for _, n, t in calls) == [(1, 0.0), (2, 1.0)]  # k - 1 samples, one greedy program
    assert greedy.accuracy > 0 == without.accuracy  # premise: ROUTED is right on some test problems
    # ROUTED's validation precision beats WRONG's (never right), so the greedy program stays chosen
    assert with_greedy.accuracy == greedy.accuracy
    assert with_greedy.run.endswith("k3-validated-greedy") and without.run.endswith("k3-validated")
    engine = open_db(db)
    with session_scope(engine) as s:
        assert s.scalar(select(Run).where(Run.name == with_greedy.run)).state["with_greedy"] is True
        assert s.scalar(select(Run).where(Run.name == greedy.run)).state["with_greedy"] is False  # k = 1: greedy alone
    with pytest.raises(WorkflowRLError, match="--best-of 2 or more"):
        evaluate_policy(db, "builtin:tiny", "test", bench, best_of=1, with_greedy=True, max_new_tokens=48)
