"""Fixtures of the reliability tests: one tiny-policy cache and one stored calc "search" per session.

The stored run comes from the learner's test helper (``tests/workflow_rl/learner_helpers.py``:
real calc workflows run in the real sandbox and scored on train and validation problems), so the
trainer has real train-split samples to learn from.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "workflow_rl"))  # learner_helpers (a unique name)


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
