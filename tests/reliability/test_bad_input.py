"""Bad input through the real CLI: ONE clear line naming the problem and the fix, exit 1, no
traceback, and the database byte-for-byte unchanged (SQL dump before == after).

Cases run in-process through ``workflow_rl.cli.main`` (the console script's entry point) and, for a
subset, as real subprocesses. A case whose command or option is not registered fails (a renamed
option would otherwise make its case pass without testing anything).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from sqlalchemy import text

from storage.engine import open_db, session_scope
from storage.repo import get_or_create_run
from tests.helpers.reliability import run_cli, sqlite_file_dump
from workflow_rl.cli import app, main
from workflow_rl.tasks import BENCHMARKS, get_benchmark, persist_problems, register_benchmark
from workflow_rl.tasks.calc import CalcBenchmark


def _closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _commands() -> set[str]:
    return {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}


def _options(command: str) -> set[str]:
    import typer.main

    group = typer.main.get_command(app)
    return {o for p in group.commands[command].params for o in p.opts}


@pytest.fixture(scope="module")
def populated(tmp_path_factory) -> Path:
    """A database with one run and calc problems (what a user's existing database looks like)."""
    path = tmp_path_factory.mktemp("bad-input") / "base.db"
    engine = open_db(str(path))
    with session_scope(engine) as s:
        persist_problems(s, get_benchmark("calc", train_size=4, validation_size=4, test_size=2))
        get_or_create_run(s, "existing", "calc", kind="search", config={"budget": 10})
    engine.dispose()
    return path


@pytest.fixture
def db(populated, tmp_path) -> Path:
    copy = tmp_path / "user.db"
    copy.write_bytes(populated.read_bytes())
    return copy


def _gsm8k(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _check(code: int, err: str, must: tuple[str, ...]) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one error line, got {lines}"
    assert lines[0].startswith("error: "), lines
    for needle in must:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def _main(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


# (name, command, args after --db DB, substrings the error line must contain: problem + fix)
CASES = [
    ("unknown benchmark", "search", ["search", "--run", "x", "--benchmark", "nope", "--budget", "10"],
     ("unknown benchmark 'nope'", "known: calc")),
    ("negative budget", "search", ["search", "--run", "x", "--budget", "-5"],
     ("budget=-5", "non-negative")),
    ("zero children", "search", ["search", "--run", "x", "--children", "0"], ("children=0", ">= 1")),
    ("zero batch", "search", ["search", "--run", "x", "--batch-size", "0"], ("batch_size=0", ">= 1")),
    ("unknown selection", "search", ["search", "--run", "x", "--selection", "best"],
     ("selection='best'", "choose one of")),
    ("unknown proposer", "search", ["search", "--run", "x", "--proposer", "oracle"],
     ("proposer='oracle'", "choose one of")),
    ("run of another benchmark", "search", ["search", "--run", "existing", "--benchmark", "humaneval",
                                            "--budget", "4"],
     ("searches 'calc'", "pick another --run")),
    ("unknown workflow id", "eval", ["eval", "999"], ("no workflow #999", "SELECT id")),
    ("bad eval split", "eval", ["eval", "1", "--split", "dev"], ("--split 'dev'", "use train, validation or test")),
    ("group size 1 (loop)", "loop", ["loop", "--run", "g", "--group-size", "1"], ("group_size=1", ">= 2")),
    ("group size 1 (train)", "train", ["train", "--run", "existing", "--min-group-size", "1"],
     ("min_group_size=1", "use >= 2")),
    ("temperature 0 (loop)", "loop", ["loop", "--run", "t", "--temperature", "0"],
     ("temperature=0", "T > 0")),
    ("negative search budget (loop)", "loop", ["loop", "--run", "b", "--search-budget", "-1"],
     ("search_budget=-1", ">= 1")),
    ("missing checkpoint (train --policy)", "train", ["train", "--run", "existing", "--policy", "/nonexistent/ckpt"],
     ("/nonexistent/ckpt",)),
    ("missing checkpoint (train --resume)", "train", ["train", "--run", "existing", "--resume"],
     ("no checkpoint", "drop --resume")),
    ("missing checkpoint (eval --policy)", "eval", ["eval", "--policy", "/nonexistent/ckpt"],
     ("/nonexistent/ckpt",)),
    ("unknown train run", "train", ["train", "--run", "nope"], ("run 'nope' not found", "workflow-rl search")),
]


@pytest.mark.parametrize(("name", "command", "args", "must"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_1_database_unchanged(name, command, args, must, db, capsys):
    assert command in _commands(), f"`workflow-rl {command}` is not registered: renamed? update the case"
    missing = [a for a in args if a.startswith("--") and a not in _options(command)]
    assert not missing, f"`workflow-rl {command}` has no {missing} option: renamed? update the case"
    before = sqlite_file_dump(db)
    code, err = _main(["--db", str(db), *args], capsys)
    _check(code, err, must)
    assert sqlite_file_dump(db) == before


def teleport_calc(**options) -> CalcBenchmark:
    """calc whose operator set names an operator that does not exist (a plugin benchmark's typo)."""
    bench = CalcBenchmark(**options)
    bench.operator_names = (*bench.operator_names, "teleport")
    return bench


def test_unknown_operator(db, capsys):
    register_benchmark("teleport-calc", f"{__name__}:teleport_calc")
    try:
        before = sqlite_file_dump(db)
        code, err = _main(["--db", str(db), "search", "--run", "tp", "--benchmark", "teleport-calc",
                           "--budget", "4"], capsys)
        _check(code, err, ("unknown operator(s) ['teleport']", "register the operator"))
        assert sqlite_file_dump(db) == before
    finally:
        BENCHMARKS.pop("teleport-calc", None)


def test_usage_errors_are_click_messages(db, capsys):
    """A misspelt option is a usage error (exit 2, click's message), not an 'unexpected' crash line."""
    before = sqlite_file_dump(db)
    code, err = _main(["--db", str(db), "search", "--run", "x", "--budgit", "5"], capsys)
    assert code == 2 and "No such option: --budgit" in err and "unexpected" not in err, err
    code, err = _main(["--db", str(db), "search"], capsys)
    assert code == 2 and "Missing option '--run'" in err, err
    assert sqlite_file_dump(db) == before


def test_unreachable_llm_endpoint(db, capsys):
    url = f"http://127.0.0.1:{_closed_port()}/v1#some-model"
    before = sqlite_file_dump(db)
    for argv in (["search", "--run", "llm", "--proposer", "llm", "--optimizer", url, "--budget", "8"],
                 ["search", "--run", "he", "--benchmark", "humaneval", "--executor", url, "--budget", "4"],
                 ["eval", "1", "--executor", url]):
        code, err = _main(["--db", str(db), *argv], capsys)
        _check(code, err, ("127.0.0.1", "--"))
        assert sqlite_file_dump(db) == before


def test_database_from_a_newer_schema(db, capsys):
    engine = open_db(str(db))
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    before = sqlite_file_dump(db)
    for argv in (["search", "--run", "x", "--budget", "10"], ["runs"], ["sql", "SELECT 1"], ["db", "upgrade"]):
        code, err = _main(["--db", str(db), *argv], capsys)
        _check(code, err, ("9999_from_the_future", "upgrade workflow-rl"))
        assert sqlite_file_dump(db) == before


def test_not_a_database_file(tmp_path, capsys):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 50)
    code, err = _main(["--db", str(path), "search", "--run", "x", "--budget", "10"], capsys)
    _check(code, err, ("not a SQLite database", "--db"))
    assert path.read_text() == "these are my notes, not a database\n" * 50


@pytest.mark.parametrize(
    ("lines", "must"),
    [
        (['{"question": "1+1?", "answer": "#### 2"}', "this is not json"], ("line 2", "not valid JSON")),
        (['{"question": "1+1?"}'], ("line 1", "missing field 'answer'")),
        (['{"question": 7, "answer": "#### 2"}'], ("line 1", "'question' must be str")),
        (['{"question": "1+1?", "answer": "two"}'], ("line 1", "####")),
    ],
    ids=["bad line", "missing field", "wrong type", "no final answer"],
)
def test_malformed_jsonl_benchmark(lines, must, db, tmp_path, capsys):
    """A malformed JSONL benchmark file (the loader names file, line and field)."""
    path = _gsm8k(tmp_path, lines)
    before = sqlite_file_dump(db)
    for how in (["--data", path], ["--benchmark-option", f"path={path}"]):
        code, err = _main(["--db", str(db), "search", "--run", "j", "--benchmark", "gsm8k", *how,
                           "--budget", "4"], capsys)
        _check(code, err, ("gsm8k.jsonl", *must))
        assert sqlite_file_dump(db) == before


def test_missing_jsonl_file_and_bad_benchmark_option(db, tmp_path, capsys):
    before = sqlite_file_dump(db)
    code, err = _main(["--db", str(db), "search", "--run", "j", "--benchmark", "gsm8k", "--data",
                       str(tmp_path / "nowhere.jsonl"), "--budget", "4"], capsys)
    _check(code, err, ("nowhere.jsonl", "file not found"))
    code, err = _main(["--db", str(db), "search", "--run", "j", "--benchmark", "gsm8k", "--budget", "4"], capsys)
    _check(code, err, ("gsm8k", "path="))
    code, err = _main(["--db", str(db), "search", "--run", "j", "--benchmark-option", "noequals", "--budget", "4"],
                      capsys)
    _check(code, err, ("noequals", "KEY=VALUE"))
    assert sqlite_file_dump(db) == before


SUBPROCESS_CASES = [
    (["search", "--run", "x", "--benchmark", "nope", "--budget", "10"], ("unknown benchmark 'nope'",)),
    (["search", "--run", "x", "--budget", "-5"], ("budget=-5",)),
    (["eval", "999"], ("no workflow #999",)),
    (["search", "--run", "j", "--benchmark", "gsm8k", "--data", "/nonexistent/gsm8k.jsonl", "--budget", "4"],
     ("gsm8k.jsonl", "file not found")),
]


def test_bad_input_as_subprocess(db):
    """The installed entry point in a fresh interpreter: same one line, exit 1, database unchanged."""
    before = sqlite_file_dump(db)
    for args, must in SUBPROCESS_CASES:
        done = run_cli(["--db", str(db), *args], timeout=120)
        _check(done.returncode, done.stderr, must)
    assert sqlite_file_dump(db) == before
    missing = db.with_name("never-created.db")
    done = run_cli(["--db", str(missing), "search", "--run", "x", "--benchmark", "nope", "--budget", "10"])
    _check(done.returncode, done.stderr, ("unknown benchmark 'nope'",))
    assert not missing.exists()  # a failed command does not leave a new empty database behind


def test_temperature_zero_for_rl_sampling_is_refused_by_the_configs():
    """T = 0 (greedy) has no sampling distribution to train on: the configs the commands build
    refuse it directly too (the CLI case above runs ``loop --temperature 0``), naming the value and the fix."""
    from workflow_rl.errors import WorkflowRLError
    from workflow_rl.learner.config import TrainConfig
    from workflow_rl.loop.config import LoopConfig

    with pytest.raises(WorkflowRLError, match=r"temperature=0.*T > 0"):
        LoopConfig(temperature=0)
    with pytest.raises(WorkflowRLError, match=r"search_temperature=0.*temperature > 0"):
        TrainConfig(run="r", search_temperature=0)
