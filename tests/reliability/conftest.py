"""Fixtures of the reliability tests: one tiny-policy cache and one stored calc "search" per session.

The stored run comes from the learner's test helper (``tests/helpers/learner.py``:
real calc workflows run in the real sandbox and scored on train and validation problems), so the
trainer has real train-split samples to learn from.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def train_db_file(tmp_path_factory) -> Path:
    """A SQLite file holding run ``calc-search`` with train-split evaluations (built once)."""
    from tests.helpers.learner import calc_search_db

    path = tmp_path_factory.mktemp("train-db")
    calc_search_db(path, n_train=6, n_val=4)
    return path / "learner.db"


@pytest.fixture
def train_db(train_db_file, tmp_path) -> str:
    """A private copy of :func:`train_db_file` for one test (a URL)."""
    shutil.copy(train_db_file, tmp_path / "train.db")
    return f"sqlite:///{tmp_path / 'train.db'}"
