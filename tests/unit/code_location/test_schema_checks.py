"""A process reads alembic's migration scripts once, and its run storage reflects the runs table once."""

from alembic.script import ScriptDirectory
from dagster._core.instance_for_test import instance_for_test

from kubetask_dagster.execution import schema_checks


def script_readings_while(monkeypatch, action) -> int:
    """How many times alembic builds a script directory (and so reads its scripts) during ``action``."""
    built: list[str] = []
    init = ScriptDirectory.__init__

    def counting_init(self, dir, *args, **kwargs):
        built.append(dir)
        init(self, dir, *args, **kwargs)

    monkeypatch.setattr(ScriptDirectory, "__init__", counting_init)
    action()
    monkeypatch.setattr(ScriptDirectory, "__init__", init)
    return len(built)


def new_runs_event_logs(instance, count: int) -> None:
    """What the webserver does when it launches ``count`` runs: each run's first event creates its
    SQLite event-log file, whose schema revision is checked and stamped."""
    for i in range(count):
        instance.report_engine_event(f"launching {i}", job_name="job", run_id=f"run-{i}-{id(instance)}")


def test_new_runs_event_logs_read_no_migration_scripts_once_shared(tmp_path, monkeypatch):
    schema_checks.share_migration_scripts()
    schema_checks.share_migration_scripts()  # idempotent
    with instance_for_test(temp_dir=str(tmp_path)) as instance:
        new_runs_event_logs(instance, 1)  # the process's one reading (unless a test before did it)
        # Dagster's default reads them twice per new file (the check, then the stamp)
        assert script_readings_while(monkeypatch, lambda: new_runs_event_logs(instance, 3)) == 0
        assert len(instance.all_logs(f"run-2-{id(instance)}")) == 1  # the files are created and written


def test_the_run_storage_reflects_the_runs_table_once(tmp_path):
    with instance_for_test(temp_dir=str(tmp_path)) as instance:
        storage = instance.run_storage
        calls: list[int] = []
        reflect = storage.has_run_stats_index_cols

        def counting() -> bool:
            calls.append(1)
            return reflect()

        storage.has_run_stats_index_cols = counting
        schema_checks.remember_run_table_columns(storage)
        schema_checks.remember_run_table_columns(storage)  # idempotent: not cached twice over
        for _ in range(3):
            instance.get_runs(limit=1)
        assert storage.has_run_stats_index_cols() is True
        assert calls == [1]
