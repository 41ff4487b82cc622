"""Run workers keep their storages' database connections open.

Dagster's Postgres storages open a new connection for every statement (``NullPool``, "to prevent
accumulating connections per DagsterInstance"); only the webserver pools, and with one connection.
A run worker writes about fifteen event rows per Task, from each step's own thread, and each row
paid a TCP connect, an authentication and a server backend forked for it: the per-event round trips
behind a 1,000-Task fan-out at 2.17x its floor on Postgres against 1.53x on SQLite (BENCHMARKS.md).
The run storage is no quieter in a run of many steps: each step's output goes through it
(``RunStorageIOManager``), and Dagster looks the run up on run events, each time reflecting the runs
table's columns on a connection of its own (``has_run_stats_index_cols``); in a burst of
pooled Tasks its connects were a fifth of the run workers' CPU (py-spy, BENCHMARKS.md).

A run worker is one long-lived instance, so its event log and its run storage get a pool each
(``POOLS``): a few connections kept, a few more opened beyond them only while many steps' threads
write at once. The schedule storage keeps Dagster's default: a run barely uses it. The pooled
connections live as long as the run (an agent's hours), so a deployment sizes Postgres's
``max_connections`` for them (docs/operations.md).

The local stack's SQLite event log is worse off: for every event row it creates an engine, connects,
runs the connect-time PRAGMAs, commits and disposes of the engine, all under one lock of the storage.
In a run worker it gets one open connection per database file instead (still used under that lock,
so one thread at a time, as before).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kubetask_dagster.execution.schema_checks import remember_run_table_columns

POOLS = {  # storage attribute of the instance: (connections kept, more opened while threads queue for them)
    "event_log_storage": (8, 8),  # a pooled run's or a BatchRun's steps write events at the same time
    "run_storage": (2, 4),  # step outputs and run lookups: a statement or two per step
}
POOL_RECYCLE_SECONDS = 3600


def keep_connections_open(instance: Any) -> None:
    """Pool the Postgres storages of this process's instance (``POOLS``), or give its SQLite event log
    one open connection per file (once per storage)."""
    event_log: Any = getattr(instance, "event_log_storage", None)
    if type(event_log).__name__ == "SqliteEventLogStorage":
        _keep_sqlite_connections_open(event_log)
    for attribute, (size, overflow) in POOLS.items():
        storage: Any = getattr(instance, attribute, None)
        if type(storage).__module__.split(".")[0] == "dagster_postgres":
            _pool_postgres(storage, size, overflow)
    remember_run_table_columns(getattr(instance, "run_storage", None))  # a step's start and its events look the run up


def _pool_postgres(storage: Any, size: int, overflow: int) -> None:
    """Swap a dagster-postgres storage's per-statement engine for a pooled one (same URL and options)."""
    from sqlalchemy.pool import NullPool

    engine = storage._engine  # dagster-postgres 0.29's engine attribute (pinned with dagster 1.13)
    if not isinstance(engine.pool, NullPool):
        return  # pooled already (a second run in this process, or the webserver's own setting)
    from dagster_postgres.utils import create_pg_engine

    storage._engine = create_pg_engine(
        storage.postgres_url,
        getattr(storage, "_token_provider", None),
        isolation_level="AUTOCOMMIT",
        pool_size=size,
        max_overflow=overflow,
        pool_recycle=POOL_RECYCLE_SECONDS,
        pool_pre_ping=True,  # a connection the server closed while an agent ran is replaced, not an error
    )
    engine.dispose()


def _keep_sqlite_connections_open(storage: Any) -> None:
    """Give a SqliteEventLogStorage one open connection per database file (its ``_connect``, dagster 1.13)."""
    if getattr(storage, "_kubetask_engines", None) is not None:
        return
    from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
    from sqlalchemy import create_engine
    from sqlalchemy.pool import StaticPool

    engines: dict[str, Any] = {}
    lock: threading.Lock = storage._db_lock

    @contextmanager
    def connect(shard: str) -> Iterator[Any]:
        with lock:  # the storage's own: one statement at a time, as Dagster's _connect does
            engine = engines.get(shard)
            if engine is None:
                engine = create_engine(
                    storage.conn_string_for_shard(shard),
                    poolclass=StaticPool,  # one connection, handed from thread to thread under the lock
                    connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
                )
                if shard not in storage._initialized_dbs:
                    storage._initdb(engine)
                    storage._initialized_dbs.add(shard)
                engines[shard] = engine
            with engine.connect() as conn:
                with conn.begin():
                    yield conn

    storage._kubetask_engines = engines
    storage._connect = connect
