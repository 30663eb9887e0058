"""CLI: db upgrade, sql, runs, show — through Typer's CliRunner and as the real console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from storage import read_session_scope
from storage.migrate import head_revision
from storage.models import Run
from workflow_rl.cli import app, main
from workflow_rl.errors import WorkflowRLError

runner = CliRunner()


def _url(engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _script() -> str:
    """The installed ``workflow-rl`` console script of this interpreter's environment."""
    local = Path(sys.executable).with_name("workflow-rl")
    found = str(local) if local.exists() else shutil.which("workflow-rl")
    assert found, "the workflow-rl console script is not installed (pip install -e .)"
    return found


def test_db_upgrade_then_already_current(tmp_path: Path):
    db = str(tmp_path / "new.db")
    first = runner.invoke(app, ["--db", db, "db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert f"upgraded empty -> {head_revision()}" in first.output
    again = runner.invoke(app, ["--db", db, "db", "upgrade"])
    assert f"already at revision {head_revision()}" in again.output


def test_sql_prints_rows_table_and_json(demo):
    engine, ids = demo
    result = runner.invoke(app, ["--db", _url(engine), "sql", "SELECT run, mean_reward FROM leaderboard "
                                 f"WHERE workflow_id = {ids['w2']}"])
    assert result.exit_code == 0, result.output
    assert "mean_reward" in result.output and "0.6667" in result.output and "demo" in result.output
    as_json = runner.invoke(app, ["--db", _url(engine), "sql", "--format", "json",
                                  "SELECT workflow_id, total_cost FROM leaderboard ORDER BY workflow_id"])
    rows = [json.loads(line) for line in as_json.output.splitlines()]
    assert [r["workflow_id"] for r in rows] == [ids[n] for n in ("w1", "w2", "w3", "w4")]
    assert rows[2]["total_cost"] is None


def test_sql_refuses_writes_without_write_flag(demo):
    engine, _ = demo
    for statement in ("DELETE FROM runs", "UPDATE runs SET name = 'x'", "DROP VIEW leaderboard",
                      "CREATE TABLE t (x INTEGER)"):
        result = runner.invoke(app, ["--db", _url(engine), "sql", statement])
        assert result.exit_code == 1
        assert isinstance(result.exception, WorkflowRLError) and "--write" in str(result.exception)
    with read_session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 2
    ok = runner.invoke(app, ["--db", _url(engine), "sql", "--write", "UPDATE runs SET status = 'done'"])
    assert ok.exit_code == 0 and "2 rows changed" in ok.output


def test_runs_and_show(demo):
    engine, ids = demo
    listed = runner.invoke(app, ["--db", _url(engine), "runs"])
    assert listed.exit_code == 0 and "demo" in listed.output and "other" in listed.output
    shown = runner.invoke(app, ["--db", _url(engine), "show", str(ids["w3"])])
    assert shown.exit_code == 0, shown.output
    assert "return 3" in shown.output and "policy" in shown.output and "validation" in shown.output
    assert f"#{ids['w3']} (policy, round 1) <- #{ids['w2']} (mutation, round 1) <- #{ids['w1']} (seed, round 0)" \
        in shown.output
    missing = runner.invoke(app, ["--db", _url(engine), "show", "999"])
    assert isinstance(missing.exception, WorkflowRLError)


def test_cli_edge_prints_one_line_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    corrupt = tmp_path / "c.db"
    corrupt.write_bytes(b"\x00garbage" * 512)
    with pytest.raises(SystemExit) as info:
        main(["--db", str(corrupt), "runs"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "not a SQLite database" in err


def test_console_script(tmp_path: Path):
    """The installed ``workflow-rl`` script: one-line errors with exit 1, and a real query."""

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([_script(), *args], capture_output=True, text=True, timeout=120)

    db = tmp_path / "real.db"
    missing = run("--db", str(db), "runs")
    assert missing.returncode == 1 and "no database at" in missing.stderr and not db.exists()
    main(["--db", str(db), "db", "upgrade"])
    corrupt = tmp_path / "c.db"
    corrupt.write_bytes(b"not sqlite " * 300)
    for args in (["--db", str(corrupt), "sql", "SELECT 1"], ["--db", str(db), "sql", "DELETE FROM runs"]):
        proc = run(*args)
        assert proc.returncode == 1
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert "Traceback" not in proc.stderr
    proc = run("--db", str(db), "sql", "--format", "csv", "SELECT COUNT(*) AS n FROM leaderboard")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["n", "0"]


def test_eval_of_a_stored_id_never_creates_a_database(tmp_path: Path):
    """`eval 5` and `eval --policy 3` name rows of an existing database: a typo in --db is an error."""
    db = tmp_path / "typo.db"
    for args in (["eval", "5"], ["eval", "--policy", "3"]):
        result = runner.invoke(app, ["--db", str(db), *args])
        assert result.exit_code == 1 and isinstance(result.exception, WorkflowRLError)
        assert "no database at" in str(result.exception) and not db.exists()


def _commands(group, prefix=()):
    """Every leaf command of the click tree: ``(path, command)``."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_command_takes_db_after_its_name():
    import typer

    leaves = dict(_commands(typer.main.get_command(app)))
    assert {("runs",), ("sql",), ("show",), ("db", "upgrade"), ("loop",), ("report",), ("train",), ("search",),
            ("eval",)} <= set(leaves)
    missing = [" ".join(path) for path, command in leaves.items()
               if not any("--db" in getattr(p, "opts", ()) for p in command.params)]
    assert missing == []


@pytest.fixture
def two_dbs(tmp_path: Path) -> tuple[str, str]:
    """Two databases told apart by their one run: ``in-a`` and ``in-b``."""
    from storage import open_db, repo, session_scope

    paths = []
    for name in ("a", "b"):
        path = str(tmp_path / f"{name}.db")
        engine = open_db(path)
        with session_scope(engine) as s:
            repo.get_or_create_run(s, f"in-{name}", "calc")
        engine.dispose()
        paths.append(path)
    return paths[0], paths[1]


@pytest.mark.parametrize("args, env, used", [
    (["runs", "--db", "{b}"], None, "b"),                  # after the command
    (["--db", "{a}", "runs"], None, "a"),                  # before it
    (["--db", "{a}", "runs", "--db", "{b}"], None, "b"),   # both: the command's own wins
    (["runs"], "{a}", "a"),                                # environment only
    (["runs", "--db", "{b}"], "{a}", "b"),                 # typed beats the environment...
    (["--db", "{b}", "runs"], "{a}", "b"),                 # ...in either place
])
def test_db_before_or_after_the_command(two_dbs, args, env, used):
    a, b = two_dbs
    argv = [arg.format(a=a, b=b) for arg in args]
    result = runner.invoke(app, argv, env={"WORKFLOW_RL_DB": env.format(a=a, b=b) if env else None})
    assert result.exit_code == 0, result.output
    other = "b" if used == "a" else "a"
    assert f"in-{used}" in result.output and f"in-{other}" not in result.output


def test_db_after_a_nested_command(tmp_path: Path):
    db = str(tmp_path / "late.db")
    result = runner.invoke(app, ["db", "upgrade", "--db", db])
    assert result.exit_code == 0, result.output
    assert f"upgraded empty -> {head_revision()}" in result.output and Path(db).exists()
