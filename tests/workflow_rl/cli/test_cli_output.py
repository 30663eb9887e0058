"""What the command line prints: only our own lines, and a closing summary that can be pasted.

The acceptance test runs ``workflow-rl loop`` as a user would (a subprocess, output to a pipe, 80
columns, an empty HOME) and reads everything it printed. The others check the summary pieces:
shell quoting (through a real shell), masked passwords, ``--db`` only where needed, no wrapping.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.helpers.learner import RUN, calc_search_db
from workflow_rl.cli import app
from workflow_rl.cli.output import (
    DEFAULT_DB,
    Summary,
    command,
    db_facts,
    print_summary,
    sql_command,
)

ROOT = Path(__file__).resolve().parents[3]

# What dependencies print when they are not kept quiet: transformers' weight loading and saving
# bars, tqdm's rate and percentage columns, Python warnings of any kind.
NOISE = ("Traceback", "Warning", "Loading weights", "Writing model shards", "it/s]", "s/it]", "%|",
         "deprecated")


def _noise(output: str) -> list[str]:
    return [line for line in output.splitlines() if any(n in line for n in NOISE)]


def test_loop_prints_only_its_own_lines_and_a_pasteable_summary(tmp_path, tiny_cache):
    """A fresh user's ``workflow-rl loop`` on tiny budgets: the database and the run are named, the
    next commands are whole lines, and nothing from the libraries underneath reaches the output."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKFLOW_RL_", "HF_", "TRANSFORMERS_", "TQDM_"))}
    env.update(HOME=str(home), COLUMNS="80", PYTHONPATH=str(ROOT), WORKFLOW_RL_CACHE=tiny_cache,
               PYTHONWARNINGS="default")  # warnings as a user's shell shows them (pytest's filters are not inherited)
    args = ["loop", "--rounds", "2", "--search-budget", "40", "--train-problems", "2", "--group-size", "4",
            "--epochs", "1", "--workers", "1"]
    out = subprocess.run([sys.executable, "-c", "from workflow_rl.cli import main; main()", *args], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    output = out.stdout + out.stderr
    assert out.returncode == 0, output
    assert f"database: {(tmp_path / 'workflow_rl.db').resolve()}" in out.stdout, output
    assert "run: loop (rounds loop/r0, loop/r1)" in out.stdout, output
    assert re.search(r"^best workflow: #\d+, validation \d\.\d{3} \(round \d\)$", out.stdout, re.M), output
    assert not _noise(output), _noise(output)
    assert "loop.py:" not in output  # log lines carry no source location
    assert output.count("round 1: done") == 1, output  # the last log line is not repeated by the bar
    lines = out.stdout.splitlines()
    ckpt = re.search(r"^policy: checkpoint (\d+) at ", out.stdout, re.M).group(1)
    for cmd in (f"workflow-rl eval --policy {ckpt} --split test", "workflow-rl report --run loop", "workflow-rl runs"):
        assert f"  {cmd}" in lines, output  # whole, on a line of its own, although longer lines exist
    (sql,) = [line for line in lines if line.startswith("  workflow-rl sql ")]
    assert "loop = 'loop'" in sql and len(sql) > 80, sql  # not wrapped at 80 columns


def test_search_summary_names_database_run_best_and_next_commands(tmp_path):
    db = str(tmp_path / "s.db")
    result = CliRunner().invoke(app, ["--db", db, "search", "--run", "s1", "--max-simulations", "1", "--budget", "0",
                                      "--batch-size", "3", "--children", "2", "--workers", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"database: {Path(db).resolve()}" in lines and "run: s1" in lines
    best = re.search(r"^best workflow: #(\d+), validation \d\.\d{3}$", result.output, re.M).group(1)
    for cmd in (f"eval {best} --split test", "report --run s1", "runs"):
        assert f"  workflow-rl --db {db} {cmd}" in lines, result.output  # not the default db: named
    assert any(line.startswith(f"  workflow-rl --db {db} sql ") and "loop = 's1'" in line for line in lines)
    assert not re.search(r"\d+/\d+ evaluations", result.output)  # the bar (transient) left no last frame


def test_train_summary_names_checkpoint_and_next_commands(tmp_path, tiny_cache):
    url, _ = calc_search_db(tmp_path, n_train=4, n_val=2)
    result = CliRunner().invoke(app, ["--db", url, "train", "--run", RUN, "--max-steps", "1", "--batch-size", "8",
                                      "--micro-batch-size", "8", "--cache-dir", tiny_cache, "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"database: {(tmp_path / 'learner.db').resolve()}" in lines and f"run: {RUN} (round 0)" in lines
    ckpt = re.search(r"^checkpoint: (\d+) at .*round-0-step-1$", result.output, re.M).group(1)
    assert f"  workflow-rl --db {url} eval --policy {ckpt} --split test" in lines
    (sql,) = [line for line in lines if " sql " in line and "FROM train_steps" in line]
    assert sql.startswith(f"  workflow-rl --db {url} sql ") and f"name = '{RUN}'" in sql


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash to check the quoting")
@pytest.mark.parametrize("query", [
    "SELECT run FROM leaderboard WHERE run = 'it''s' ORDER BY 1",
    """SELECT json_extract(metrics, '$."loss/policy"') FROM train_steps WHERE x = "a`b\\c$HOME" """,
    "SELECT '!x' AS bang",
])
def test_sql_command_reaches_the_program_unchanged_through_a_shell(query):
    line = sql_command(DEFAULT_DB, query)
    script = "workflow-rl() { printf '%s\\0' \"$@\"; }\n" + line  # the function receives the parsed words
    words = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split("\0")
    assert words[:2] == ["sql", query]


def test_db_option_only_when_needed_and_never_a_password(monkeypatch):
    monkeypatch.delenv("WORKFLOW_RL_DB", raising=False)
    assert command(DEFAULT_DB, "runs") == "workflow-rl runs"
    assert command("my runs.db", "runs") == "workflow-rl --db 'my runs.db' runs"
    url = "postgresql+psycopg://me:s3cret@db.example/wf"
    facts, line = db_facts(url), command(url, "runs")
    assert "s3cret" not in "\n".join(facts) + line and "***" in facts[0] and "***" in line
    assert "password" in facts[1]
    monkeypatch.setenv("WORKFLOW_RL_DB", url)  # the next command in this shell finds it by itself
    assert command(url, "runs") == "workflow-rl runs" and len(db_facts(url)) == 1


def test_summary_lines_are_never_wrapped():
    long = "workflow-rl --db /a/very/long/path/" + "x" * 80 + "/runs.db report --run loop"
    buffer = io.StringIO()
    print_summary(Summary(["database: [bold]x[/]"], [("report", long)]), Console(file=buffer, width=80))
    assert buffer.getvalue().splitlines() == ["database: [bold]x[/]", "next:", "  # report", f"  {long}"]
