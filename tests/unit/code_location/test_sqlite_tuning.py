"""The opt-in PRAGMA synchronous for the local stack's SQLite storage."""

import sqlite3

import pytest
import sqlalchemy

from kubetask_dagster.local import sqlite_tuning


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


def test_unset_changes_nothing(fresh, tmp_path):
    assert sqlite_tuning.apply(None) is None
    assert _synchronous(tmp_path) == sqlite3.connect(":memory:").execute("PRAGMA synchronous").fetchone()[0]


def test_off_applies_to_every_new_sqlite_connection(fresh, tmp_path):
    assert sqlite_tuning.apply("off") == "OFF"
    assert _synchronous(tmp_path) == 0


def test_a_bad_value_is_refused(fresh):
    with pytest.raises(ValueError, match="sqlite_synchronous"):
        sqlite_tuning.apply("fast")


def test_the_launcher_config_turns_it_on_for_its_process_and_its_zygote(fresh, tmp_path):
    from kubetask_dagster.local.launcher import SQLITE_FLAG, ForkingRunLauncher

    launcher = ForkingRunLauncher.from_config_value(None, {"sqlite_synchronous": "OFF"})
    assert _synchronous(tmp_path) == 0
    assert launcher._zygote_args() == [SQLITE_FLAG, "OFF"]
    assert ForkingRunLauncher.from_config_value(None, {})._zygote_args() == []
