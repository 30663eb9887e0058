"""Fixtures of the reliability tests: one tiny-policy cache and one stored calc "search" per session.

The stored run comes from the learner's test helper (``tests/workflow_rl/learner_helpers.py``:
real calc workflows run in the real sandbox and scored on train and validation problems), so the
trainer has real train-split samples to learn from.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "workflow_rl"))  # learner_helpers (a unique name)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> str:
    """Where ``builtin:tiny`` is built once for all reliability tests.

    Built by a fresh interpreter, as the CLI processes the tests start will look it up: the cache
    key hashes the operator registry's text, which other tests may extend inside this process.
    Without this, each killed trainer could spend its life building the model instead.
    """
    cache = str(tmp_path_factory.mktemp("tiny-cache"))
    code = "import sys; from workflow_rl.policy import Policy; Policy.load('builtin:tiny', cache_dir=sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, cache], check=True, timeout=900, cwd=Path(__file__).parents[2],
                   capture_output=True)
    return cache


@pytest.fixture(scope="session")
def train_db_file(tmp_path_factory) -> Path:
    """A SQLite file holding run ``calc-search`` with train-split evaluations (built once)."""
    from learner_helpers import calc_search_db

    path = tmp_path_factory.mktemp("train-db")
    calc_search_db(path, n_train=6, n_val=4)
    return path / "learner.db"


@pytest.fixture
def train_db(train_db_file, tmp_path) -> str:
    """A private copy of :func:`train_db_file` for one test (a URL)."""
    shutil.copy(train_db_file, tmp_path / "train.db")
    return f"sqlite:///{tmp_path / 'train.db'}"
