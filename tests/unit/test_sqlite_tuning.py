"""The opt-in PRAGMA synchronous for the local stack's SQLite storage."""

import sqlite3

import pytest
import sqlalchemy

from kubetask_dagster import sqlite_tuning


@pytest.fixture
def fresh():
    assert sqlite_tuning._listener is None
    yield
    if sqlite_tuning._listener is not None:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "connect", sqlite_tuning._listener)
        sqlite_tuning._listener = None


def _synchronous(tmp_path) -> int:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/x.db")
    with engine.connect() as conn:
        return conn.execute(sqlalchemy.text("PRAGMA synchronous")).scalar()


def test_unset_changes_nothing(fresh, monkeypatch, tmp_path):
    monkeypatch.delenv(sqlite_tuning.ENV, raising=False)
    assert sqlite_tuning.apply_from_env() is None
    assert _synchronous(tmp_path) == sqlite3.connect(":memory:").execute("PRAGMA synchronous").fetchone()[0]


def test_off_applies_to_every_new_sqlite_connection(fresh, monkeypatch, tmp_path):
    monkeypatch.setenv(sqlite_tuning.ENV, "off")
    assert sqlite_tuning.apply_from_env() == "OFF"
    assert _synchronous(tmp_path) == 0


def test_a_bad_value_is_refused(fresh, monkeypatch):
    monkeypatch.setenv(sqlite_tuning.ENV, "fast")
    with pytest.raises(ValueError, match="KUBETASK_SQLITE_SYNCHRONOUS"):
        sqlite_tuning.apply_from_env()
