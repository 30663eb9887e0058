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
