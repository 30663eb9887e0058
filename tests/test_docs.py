"""The docs stay true: every relative link in README.md, docs/ and benchmarks/README.md resolves, and
every ``python -m`` / ``workflow-rl`` command they show names a module or command that exists."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # links, not code
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    missing = [t for t in _links(page) if not (page.parent / t.split("#")[0]).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_python_modules_named_in_the_docs_exist():
    modules = {m for page in PAGES for m in re.findall(r"python -m ([\w.]+)", page.read_text(encoding="utf-8"))}
    assert modules, "no `python -m` command found: the pattern broke"
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    assert not missing, f"the docs run modules that do not exist: {missing}"


def test_workflow_rl_commands_named_in_the_docs_exist():
    from typer.main import get_command

    from workflow_rl.cli import app

    commands = set(get_command(app).commands)
    named = {c for page in PAGES for c in re.findall(r"(?:^|`|\$ )workflow-rl ([a-z][a-z-]+)", page.read_text(encoding="utf-8"), flags=re.M)}
    assert named, "no `workflow-rl` command found: the pattern broke"
    unknown = sorted(named - commands)
    assert not unknown, f"the docs name commands that do not exist: {unknown} (have {sorted(commands)})"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_code_fences_are_closed(page):
    fences = re.findall(r"^```", page.read_text(encoding="utf-8"), flags=re.M)
    assert len(fences) % 2 == 0, f"{page.relative_to(ROOT)} has a ``` block that is never closed"


# Paths in `backticks` that name a file or folder of this repository; `<x>` is a placeholder (any name).
REPO_PATH = re.compile(r"`((?:workflow_rl|tests|benchmarks|docs|search|operators|storage)/[^`\s]*)`")


def _prose(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


def missing_paths(text: str) -> list[str]:
    """The repository paths quoted in ``text`` (outside fenced code) that do not exist."""
    missing = []
    for raw in REPO_PATH.findall(_prose(text)):
        path = raw.split("::")[0].rstrip(".,;:)")
        pattern = re.sub(r"<[^>]*>", "*", path)
        found = any(ROOT.glob(pattern.rstrip("/"))) if "*" in pattern else (ROOT / path).exists()
        if not found:
            missing.append(raw)
    return missing


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_repository_paths_named_in_the_docs_exist(page):
    missing = missing_paths(page.read_text(encoding="utf-8"))
    assert not missing, f"{page.relative_to(ROOT)} names files that do not exist: {missing}"


def test_repository_paths_are_found():
    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    assert len(REPO_PATH.findall(_prose(text))) > 50, "few repository paths found: the pattern broke"
    assert missing_paths("`workflow_rl/no_such_module.py` and `docs/no-such-page.md`") == [
        "workflow_rl/no_such_module.py", "docs/no-such-page.md"]
    assert missing_paths("`workflow_rl/learner/grpo.py`, `tests/workflow_rl/<x>/__init__.py`") == []


def _shell_commands(page: Path) -> list[str]:
    """The command lines of the page's ```bash blocks (continuation lines joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _words(line: str) -> list[str]:
    """Shell words of one line, up to a comment (a word that starts with ``#``) or a ``|``, ``&&``, ``;``."""
    import shlex

    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    words = []
    for word in lexer:
        if word.startswith("#") or word in ("|", "||", "&&", ";"):
            break
        words.append(word)
    return words


def unknown_options(line: str, app_command) -> list[str]:
    """The ``--options`` of each ``workflow-rl ...`` call on ``line`` that its command does not take.

    Walks the words as click does: options of the group before the command name (skipping the values
    of options that take one), then the (sub)command, then its own options.
    """
    import click

    def option(command: click.Command, word: str) -> click.Parameter | None:
        name = word.split("=", 1)[0]
        return next((p for p in command.params if name in (*p.opts, *p.secondary_opts)), None)

    words, bad = _words(line), []
    for start in [i for i, w in enumerate(words) if w == "workflow-rl"]:
        command, rest = app_command, words[start + 1:]
        while rest:
            word = rest.pop(0)
            if word == "workflow-rl":
                break
            if word.startswith("--"):
                param = option(command, word)
                if param is None:
                    bad.append(f"{'workflow-rl' if command is app_command else command.name} {word.split('=', 1)[0]}")
                elif not (getattr(param, "is_flag", False) or getattr(param, "count", False) or "=" in word):
                    del rest[:param.nargs]  # the option's value(s)
            elif word in getattr(command, "commands", {}):  # typer's groups are click groups
                command = command.commands[word]
    return bad


def test_workflow_rl_options_shown_in_the_docs_exist():
    from typer.main import get_command

    from workflow_rl.cli import app

    cli = get_command(app)
    calls = [(page, line) for page in PAGES for line in _shell_commands(page) if "workflow-rl" in _words(line)]
    assert len(calls) > 20, "few `workflow-rl` calls found in ```bash blocks: the pattern broke"
    bad = [f"{page.relative_to(ROOT)}: {option}" for page, line in calls for option in unknown_options(line, cli)]
    assert not bad, f"the docs show options that the commands do not have: {bad}"


def test_unknown_options_catches_a_wrong_option():
    from typer.main import get_command

    from workflow_rl.cli import app

    cli = get_command(app)
    assert unknown_options("workflow-rl --db x.db train --run r --lora --lr 1e-4  # --nope", cli) == []
    assert unknown_options("workflow-rl search --run r --budget 0 --no-such-option 3", cli) == ["search --no-such-option"]
    assert unknown_options("workflow-rl eval --run r", cli) == ["eval --run"]  # --run is search's, not eval's
    assert unknown_options("workflow-rl --select x runs", cli) == ["workflow-rl --select"]
    assert unknown_options("workflow-rl db upgrade --db x.db --write", cli) == ["upgrade --write"]
    # a value that looks like an option is the option's value, not an option
    assert unknown_options("workflow-rl sql --format csv 'SELECT 1'", cli) == []
