"""Migrations: from an empty file, drift against the models, newer schemas, bad URLs and files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from search.tree import load_tree
from storage import open_db, read_session_scope, session_scope
from storage.engine import create_db_engine
from storage.errors import StorageError
from storage.migrate import alembic_config, current_revision, head_revision, upgrade
from storage.models import Base, utcnow
from storage.views import VIEWS

TABLES = {"runs", "problems", "workflows", "generations", "evaluations", "search_nodes", "policy_checkpoints",
          "train_steps", "alembic_version"}


def test_migrates_an_empty_file(tmp_path: Path):
    path = tmp_path / "empty.db"
    path.touch()  # a zero-byte file is a valid, empty SQLite database
    engine = open_db(str(path))
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) == TABLES
        assert {v.name for v in VIEWS} <= set(inspect(conn).get_view_names())
        assert current_revision(conn) == head_revision()
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_models_and_migrations_agree(engine):
    """Alembic autogenerate finds no difference between storage/models.py and the migrated schema."""
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_downgrade_to_base_and_upgrade_again(engine):
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        assert inspect(conn).get_view_names() == []
    assert upgrade(engine) == (None, head_revision())
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) == TABLES
    assert upgrade(engine) == (head_revision(), head_revision())  # already at head: no-op


def test_newer_schema_is_refused_and_left_unchanged(db_url: str):
    engine = open_db(db_url)
    with session_scope(engine) as s:
        s.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed9999'"))
        s.execute(text("DROP VIEW problem_summary"))  # a marker that a re-migration would restore
    engine.dispose()
    with pytest.raises(StorageError) as info:
        open_db(db_url)
    message = str(info.value)
    assert "f00dfeed9999" in message and "upgrade workflow-rl" in message and "\n" not in message
    raw = create_db_engine(db_url)
    with read_session_scope(raw) as s:
        assert s.execute(text("SELECT version_num FROM alembic_version")).scalar() == "f00dfeed9999"
        assert "problem_summary" not in inspect(s.connection()).get_view_names()
    raw.dispose()


def test_corrupt_file_gives_one_line_error_and_is_untouched(tmp_path: Path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(StorageError) as info:
        open_db(str(path))
    assert "not a SQLite database" in str(info.value) and "\n" not in str(info.value)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


@pytest.mark.parametrize(
    "url, expected",
    [
        ("nosuchdialect://user@host/db", "invalid database URL"),
        ("sqlite:////nonexistent-dir-wfrl/sub/x.db", "cannot open database"),
        ("postgresql+psycopg://nobody:secret@127.0.0.1:1/none", "cannot open database"),
    ],
)
def test_bad_url_gives_one_line_error(url: str, expected: str):
    with pytest.raises(StorageError) as info:
        open_db(url)
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert "secret" not in message  # passwords are masked


def test_up_to_date_database_is_not_migrated_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    open_db(url).dispose()

    def fail(*_args, **_kwargs):
        raise AssertionError("alembic must not run on an up-to-date database")

    monkeypatch.setattr(command, "upgrade", fail)
    open_db(url).dispose()


def test_two_engines_migrating_one_fresh_file(tmp_path: Path):
    """The second migration re-reads the revision under the write lock and does nothing."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    first, second = create_db_engine(url), create_db_engine(url)
    assert upgrade(first) == (None, head_revision())
    assert upgrade(second) == (head_revision(), head_revision())
    first.dispose()
    second.dispose()
    plain = create_engine(url)
    with plain.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
    plain.dispose()


def test_autogenerate_revision_on_a_copy_of_the_migrations(tmp_path: Path):
    """With models and migrations in agreement, the helper writes an empty revision after head."""
    import shutil

    from storage.migrate import MIGRATIONS_DIR, autogenerate_revision

    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    made = autogenerate_revision("nothing changed", script_location=copy)
    head = head_revision()
    after = f"{int(head) + 1:04d}"
    assert made.parent == copy / "versions" and made.name.startswith(f"{after}_")
    body = made.read_text()
    assert f'revision: str = "{after}"' in body.replace("'", '"')
    assert f'down_revision: str | None = "{head}"' in body.replace("'", '"')
    assert "op.create_table" not in body and "op.add_column" not in body


def _insert(conn, table: str, **values) -> int:
    """Insert one row with plain SQL (the ORM maps the head schema, not revision 0001's)."""
    values = {"created_at": utcnow(), **values}
    columns = ", ".join(values)
    params = ", ".join(f":{k}" for k in values)
    return conn.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({params}) RETURNING id"), values).scalar()


def test_0002_backfills_expansions_of_an_old_tree(db_url: str):
    """A database at revision 0001 holding a tree is upgraded; expansions come from the children.

    Tree (node: expanded flag, children's rounds) -> expected expansions:
    a: yes, b r1 + c r1 + d r3 -> 2 distinct rounds; b: yes, none -> 1 (an all-duplicate expansion);
    c: no, none -> 0; d: yes, e r5 -> 1; e: no -> 0.
    """
    engine = create_db_engine(db_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
        run = _insert(conn, "runs", name="old", benchmark="calc", kind="search", status="running",
                      config="{}", state="{}", updated_at=utcnow())
        nodes: dict[str, int] = {}
        for name, parent, round_, expanded in [("a", None, 0, True), ("b", "a", 1, True), ("c", "a", 1, False),
                                               ("d", "a", 3, True), ("e", "d", 5, False)]:
            wid = _insert(conn, "workflows", run_id=run, code=name, code_hash=name, round=round_, source="seed",
                          valid=True)
            nodes[name] = _insert(conn, "search_nodes", run_id=run, workflow_id=wid, round=round_,
                                  parent_node_id=nodes.get(parent), depth=0, visits=1, value_sum=0.5,
                                  expanded=expanded)
    assert upgrade(engine) == ("0001", head_revision())
    with engine.connect() as conn:
        got = dict(conn.execute(text("SELECT id, expansions FROM search_nodes")).all())
        assert {name: got[i] for name, i in nodes.items()} == {"a": 2, "b": 1, "c": 0, "d": 1, "e": 0}
    engine.dispose()
    fresh = open_db(db_url)  # the upgraded database is at head: it opens without migrating again
    with session_scope(fresh) as s:
        tree = load_tree(s, run)
    assert tree.expansions[1:] == [2, 1, 0, 1, 0]
    fresh.dispose()


def test_0003_links_existing_loop_rounds_and_keeps_their_rows(db_url: str):
    """A database at 0002 with a loop ``L`` (rounds ``L/r0``, ``L/r1``) and a plain run is upgraded:
    the rounds point at ``L`` (the loop state names them), the views select them with ``loop = 'L'``,
    and no row is lost (a table rebuild of ``runs`` would cascade-delete every workflow on SQLite)."""
    engine = create_db_engine(db_url)
    state = '{"rounds": {"0": {"search_run": "L/r0", "phase": "done"}, "1": {"search_run": "L/r1"}}}'
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002")
        common = {"benchmark": "calc", "status": "done", "config": "{}", "updated_at": utcnow()}
        loop = _insert(conn, "runs", name="L", kind="loop", state=state, **common)
        runs = {name: _insert(conn, "runs", name=name, kind="search", state="{}", **common)
                for name in ("L/r0", "L/r1", "solo")}
        pid = conn.execute(text("INSERT INTO problems (benchmark, split, key, text, reference, meta) "
                                "VALUES ('calc', 'validation', 'v1', '1+1', '\"2\"', '{}') RETURNING id")).scalar()
        for name in ("L/r1", "solo"):
            wid = _insert(conn, "workflows", run_id=runs[name], code=name, code_hash=name, round=0, source="seed",
                          valid=True)
            _insert(conn, "evaluations", run_id=runs[name], workflow_id=wid, problem_id=pid, repeat=0, reward=1.0,
                    prompt_tokens=0, completion_tokens=0)
    assert upgrade(engine) == ("0002", head_revision())
    with engine.connect() as conn:
        links = {name: tuple(row) for name, *row in conn.execute(text("SELECT name, parent_id, loop_round FROM runs"))}
        assert links == {"L": (None, None), "L/r0": (loop, 0), "L/r1": (loop, 1), "solo": (None, None)}
        board = conn.execute(text("SELECT run, loop, loop_round FROM leaderboard ORDER BY run")).all()
        assert [tuple(r) for r in board] == [("L/r1", "L", 1), ("solo", "solo", None)]
        assert conn.execute(text("SELECT COUNT(*) FROM evaluations")).scalar() == 2
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0002")
    with engine.connect() as conn:
        assert {"parent_id", "loop_round"}.isdisjoint(c["name"] for c in inspect(conn).get_columns("runs"))
        assert conn.execute(text("SELECT COUNT(*) FROM leaderboard")).scalar() == 2
    engine.dispose()
