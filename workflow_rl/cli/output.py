"""What the command line prints around its work: a quiet library layer and a closing summary.

Two rules the commands follow:

- Only our own lines reach the user: dependency progress bars (transformers' "Loading weights",
  huggingface_hub's downloads) and dependency deprecation notices are switched off before any of
  those libraries is imported (:func:`quiet_libraries`). Deprecated calls of our own are fixed,
  not hidden (tests check the decode path emits none).
- The end of a long command says where its results are and what to run next, with commands on
  lines of their own that are never wrapped, so they can be pasted at any terminal width and
  survive a log file (:func:`print_summary`).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from workflow_rl.cli.options import DB_ENV, DEFAULT_DB

OUR_PACKAGES = r"(workflow_rl|search|operators|storage)(\.|$)"
"""Modules whose warnings stay visible: they are ours to fix."""


def quiet_libraries() -> None:
    """Keep dependency progress bars and deprecation notices off the terminal and out of logs.

    Environment variables are read by the libraries when they are imported, here and in worker
    processes; ``setdefault`` leaves a user's explicit choice alone (``TRANSFORMERS_VERBOSITY=warning``
    brings transformers' warnings back). Libraries already imported are switched off directly.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # huggingface_hub, and transformers' tqdm
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # its warnings are logger records, not warnings
    os.environ.setdefault("TQDM_DISABLE", "1")  # any other tqdm bar (tqdm >= 4.66 reads it)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    # Deprecation notices raised by dependencies about their own internals are not the user's to act
    # on; those attributed to our modules stay visible (the later filter is checked first).
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module=OUR_PACKAGES)


def log_console(stderr: bool = False) -> Console:
    """A console for timestamped progress lines without rich's ``file.py:line`` source column."""
    return Console(stderr=stderr, log_path=False)


def _url(db: str):
    """``db`` as a SQLAlchemy URL (a plain path becomes an SQLite URL), or None if it is not one."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    from storage.engine import normalize_url

    try:
        return make_url(normalize_url(db))
    except ArgumentError:
        return None


def db_label(db: str) -> str:
    """The database as the user should read it: an SQLite file's absolute path, else the URL with
    its password masked (the label is printed and may end up in logs)."""
    url = _url(db)
    if url is None:
        return db
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return str(Path(url.database).resolve())
    return url.render_as_string(hide_password=True)


def db_facts(db: str) -> list[str]:
    """The summary's database line, and a note when the commands below show a masked password."""
    facts = [f"database: {db_label(db)}"]
    option = _db_option(db)
    if option and "***" in option[1]:
        facts.append("  (password shown as ***: put the real one back, or set WORKFLOW_RL_DB to the URL)")
    return facts


def _db_option(db: str) -> list[str]:
    """``["--db", X]`` when later commands need it to find this database, else nothing.

    Not needed for the default, nor when ``WORKFLOW_RL_DB`` names it (the next command in the same
    shell reads it too). A password is never printed: the URL is shown masked (``***``).
    """
    from storage.errors import display_url

    if db == DEFAULT_DB or db == os.environ.get(DB_ENV):
        return []
    return ["--db", display_url(db)]  # a plain path is not a URL and comes back as it is


def command(db: str, *args: str) -> str:
    """A ``workflow-rl`` command line for a POSIX shell, ``--db`` before the subcommand when needed."""
    return shlex.join(["workflow-rl", *_db_option(db), *args])


def sql_literal(value: str) -> str:
    """``value`` as an SQL string literal (quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def sql_command(db: str, query: str) -> str:
    """``workflow-rl sql "QUERY"``: double quotes (readable next to the SQL's single quotes), with
    the characters the shell expands there escaped; POSIX single-quoting if it holds a ``!``
    (history expansion ignores backslashes in interactive shells)."""
    base = command(db, "sql")
    if "!" in query:
        return f"{base} {shlex.quote(query)}"
    escaped = re.sub(r'(["$`\\])', r"\\\1", query)
    return f'{base} "{escaped}"'


def backend(db: str) -> str:
    """The SQLAlchemy backend name of ``db`` (``sqlite``, ``postgresql``, ...), for dialect-specific SQL."""
    url = _url(db)
    return "sqlite" if url is None else url.get_backend_name()


@dataclass
class Summary:
    """The closing block of a command: facts (one per line) and the commands to run next."""

    facts: list[str] = field(default_factory=list)
    commands: list[tuple[str, str]] = field(default_factory=list)  # (what it does, command line)

    def lines(self) -> list[str]:
        """The block as printed: facts, then each command under its description, indented."""
        out = list(self.facts)
        if self.commands:
            out.append("next:")
            for what, line in self.commands:
                out.append(f"  # {what}")
                out.append(f"  {line}")
        return out


def print_summary(summary: Summary, console: Console | None = None) -> None:
    """Print ``summary`` unwrapped and without markup (a command may hold ``[`` or long paths)."""
    console = console or Console()
    for line in summary.lines():
        console.print(line, soft_wrap=True, markup=False, highlight=False)


def next_for_run(db: str, run: str) -> list[tuple[str, str]]:
    """The commands every run summary ends with: its report, the run list and its best workflows.

    The views' ``loop`` column names a loop for the rows of its rounds (and a plain run for its
    own), so one filter on the name the user gave finds both.
    """
    where = f"loop = {sql_literal(run)}"
    query = (f"SELECT run, workflow_id, mean_reward, n_evaluations FROM leaderboard WHERE {where} "
             "ORDER BY mean_reward DESC LIMIT 10")
    return [
        ("plots and a summary of the run", command(db, "report", "--run", run)),
        ("every run in the database", command(db, "runs")),
        ("the best workflows (any SELECT works; the views are listed in docs/storage.md)", sql_command(db, query)),
    ]
