"""A run worker's SQLite event log keeps its connections open (the Postgres side: an integration test,
tests/integration/test_postgres_connections.py)."""

import sqlalchemy
from dagster import DagsterEventType
from dagster._core.instance_for_test import instance_for_test
from dagster._core.storage.event_log.base import EventRecordsFilter

from tests.chatty_jobs import LOG_LINES, kube_job, plain_job


def connections_of_a_run(tmp_path, job_def) -> tuple[int, list[str]]:
    """SQLite connections opened while the run executed, and the log lines its event log holds (read
    by a second instance, as the webserver would)."""
    tmp_path.mkdir()
    opened: list[object] = []

    def count(dbapi_connection, record) -> None:
        opened.append(dbapi_connection)

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", count)
    try:
        with instance_for_test(temp_dir=str(tmp_path)) as instance:
            result = job_def.execute_in_process(instance=instance)
            assert result.success
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "connect", count)
    with instance_for_test(temp_dir=str(tmp_path)) as reader:
        lines = [e.user_message for e in reader.all_logs(result.run_id) if e.user_message.startswith("line ")]
        assert reader.get_event_records(EventRecordsFilter(DagsterEventType.RUN_SUCCESS), limit=1)
    return len(opened), lines


def test_a_run_with_the_kube_resource_reuses_its_sqlite_connections(tmp_path):
    dagster_default, plain_lines = connections_of_a_run(tmp_path / "plain", plain_job)
    ours, kube_lines = connections_of_a_run(tmp_path / "kube", kube_job)
    assert plain_lines == kube_lines == [f"line {i}" for i in range(LOG_LINES)]  # every row written and readable
    assert dagster_default > LOG_LINES  # a connection per event row, and more
    assert dagster_default - ours >= LOG_LINES, (ours, dagster_default)
