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
from workflow_rl.cli import USER_ERRORS, app, main

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
        assert isinstance(result.exception, USER_ERRORS) and "--write" in str(result.exception)
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
    assert isinstance(missing.exception, USER_ERRORS)


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
        assert result.exit_code == 1 and isinstance(result.exception, USER_ERRORS)
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


def test_runs_lists_a_loop_with_its_totals_and_its_rounds_under_it(loop_demo):
    engine, ids = loop_demo
    result = runner.invoke(app, ["runs", "--db", _url(engine)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    loop_line = next(i for i, line in enumerate(lines) if " demo " in line and "loop" in line)
    assert "demo/r0" in lines[loop_line + 1] and "round 0" in lines[loop_line + 1]
    assert lines[loop_line + 1].index("demo/r0") > lines[loop_line].index("demo")  # indented under it
    # the loop holds no workflows itself: its totals are its round's (3 workflows, 10 evaluations)
    assert lines[loop_line].split()[4:7] == ["3", "10", "0.667"]
    assert lines[loop_line + 1].split()[5:8] == ["3", "10", "0.667"]
    assert "not shown: created; --wide" in result.output  # left out at 80 columns, and said so
    wide = runner.invoke(app, ["runs", "--wide", "--db", _url(engine)])
    assert "created" in wide.output.splitlines()[1] and "--wide" not in wide.output


def test_sql_on_a_loop_name_finds_its_rounds_and_empty_results_get_a_hint(loop_demo):
    engine, ids = loop_demo
    by_loop = runner.invoke(app, ["sql", "--db", _url(engine), "--format", "csv",
                                  "SELECT workflow_id FROM leaderboard WHERE loop = 'demo' ORDER BY workflow_id"])
    assert by_loop.stdout.splitlines() == ["workflow_id", *(str(ids[w]) for w in ("w1", "w2", "w3"))]
    as_run = runner.invoke(app, ["sql", "--db", _url(engine), "SELECT * FROM leaderboard WHERE run = 'demo'"])
    assert as_run.exit_code == 0 and "(no rows)" in as_run.stdout
    assert "'demo' is a loop; its rows are in its rounds demo/r0" in as_run.stderr
    assert "use loop = 'demo'" in as_run.stderr
    typo = runner.invoke(app, ["sql", "--db", _url(engine), "--format", "csv",
                               "SELECT * FROM leaderboard WHERE run = 'dmeo'"])
    assert typo.stdout.splitlines()[1:] == []  # csv stays clean: the hint goes to stderr
    assert "no run is named 'dmeo'; close names: demo" in typo.stderr
    found = runner.invoke(app, ["sql", "--db", _url(engine), "SELECT * FROM leaderboard WHERE run = 'other'"])
    assert found.stderr == ""  # rows found: nothing to explain


def test_tables_fit_80_columns_in_a_real_terminal_width(loop_demo, tmp_path: Path):
    """As a subprocess with COLUMNS=80: no line of runs or sql is longer than 80 characters."""
    import os

    engine, _ = loop_demo
    cli = [sys.executable, "-c", "from workflow_rl.cli import main; main()"]
    env = {**os.environ, "COLUMNS": "80"}
    queries = ["SELECT * FROM leaderboard", "SELECT * FROM problem_matrix", "SELECT code, w.* FROM workflows w",
               "SELECT 'x' || printf('%.200c', 'y') AS long_text, 1 AS n" if engine.dialect.name == "sqlite"
               else "SELECT repeat('y', 200) AS long_text, 1 AS n"]
    outputs = []
    for args in (["runs"], *(["sql", q] for q in queries)):
        proc = subprocess.run([*cli, *args, "--db", _url(engine)], capture_output=True, text=True, env=env,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
        assert max(len(line) for line in proc.stdout.splitlines()) <= 80, proc.stdout
    header = outputs[1].splitlines()[0]
    assert "workflow_id" in header and "mean_reward" not in header
    assert "not shown: mean_reward," in outputs[1]  # the columns that do not fit are named
    proc = subprocess.run([*cli, "sql", "--wide", queries[0], "--db", _url(engine)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert "total_cost" in proc.stdout and max(len(line) for line in proc.stdout.splitlines()) > 80


def test_fit_widths_shortens_the_widest_first_and_drops_what_cannot_fit():
    from workflow_rl.cli.tables import fit_widths

    headers = ["id", "text", "n"]
    rows = [["1", "x" * 100, "12345"]]
    assert fit_widths(headers, rows, 200) == [2, 100, 5]  # room for all: natural widths
    assert fit_widths(headers, rows, 40) == [2, 40 - 6 - 2 - 5, 5]  # only the wide text gives way
    assert fit_widths(headers, rows, 16) == [2, 10]  # "n" cannot fit beside a readable "text"
    assert fit_widths(["code"], [["a\nlonger line"]], 80) == [11]  # multi-line values: longest line
    # a folded column (a name) keeps 20 characters: the next column is left out instead
    assert len(fit_widths(["name", "n"], [["n" * 30, "12345678901234"]], 30)) == 2
    assert fit_widths(["name", "n"], [["n" * 30, "12345678901234"]], 30, fold=("name",)) == [28]


def test_named_runs_reads_only_comparisons_with_run_loop_or_name():
    from workflow_rl.cli.hints import named_runs

    query = "SELECT * FROM leaderboard l JOIN runs r ON r.id = l.run_id WHERE l.RUN = 'a''b' AND r.name='c' " \
            "AND loop = 'd' AND problem_key = 'v1' AND first_name = 'e'"
    assert named_runs(query) == [("run", "a'b"), ("name", "c"), ("loop", "d")]
