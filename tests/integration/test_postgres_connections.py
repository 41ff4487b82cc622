"""A run on Postgres storage keeps its database connections open: the server counts the sessions a
run opens, with the code location's resource (pooled) and without it (Dagster's NullPool)."""

import contextlib
import shutil
import tempfile
from pathlib import Path

import psycopg2
import pytest
import yaml
from dagster._core.instance_for_test import instance_for_test

from benchmarks.postgres import dagster_storage_yaml, postgres_server
from kubetask_dagster.execution.connections import keep_connections_open
from tests.chatty_jobs import LOG_LINES, kube_job, plain_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres_url():
    # not under pytest's 0700 base: the server runs as its own user (.ci/run's cleanup knows the prefix)
    root = Path(tempfile.mkdtemp(prefix="kubetask-pg-connections-"))
    try:
        with postgres_server(root) as url:
            yield url
    finally:
        shutil.rmtree(root, ignore_errors=True)


def sessions(url: str) -> int:
    """Sessions the server has established to its database so far (PostgreSQL 14+)."""
    # psycopg2's own context manager ends the transaction, not the connection
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        (count,) = cur.fetchone()
    return count


def sessions_of_a_run(url: str, job_def) -> int:
    with instance_for_test(overrides=yaml.safe_load(dagster_storage_yaml(url))) as instance:
        before = sessions(url)
        assert job_def.execute_in_process(instance=instance).success
        return sessions(url) - before - 1  # the count's own session


def test_a_run_with_the_kube_resource_reuses_its_connections(postgres_url):
    dagster_default = sessions_of_a_run(postgres_url, plain_job)
    ours = sessions_of_a_run(postgres_url, kube_job)
    assert dagster_default > LOG_LINES  # a session per event row, and more
    # the log lines' rows cost no session now; what is left opens before the resource is set up
    assert dagster_default - ours >= LOG_LINES, (ours, dagster_default)


def test_a_run_workers_run_lookups_reuse_their_connections(postgres_url):
    with instance_for_test(overrides=yaml.safe_load(dagster_storage_yaml(postgres_url))) as instance:
        before = sessions(postgres_url)
        for _ in range(10):
            instance.get_run_by_id("no-such-run")
        dagster_default = sessions(postgres_url) - before - 1
        keep_connections_open(instance)
        before = sessions(postgres_url)
        for _ in range(10):
            instance.get_run_by_id("no-such-run")
        ours = sessions(postgres_url) - before - 1
    assert dagster_default >= 10  # a session per statement: the lookup, and the runs table's reflection
    assert ours <= 2, ours  # the pool's connections, opened once
