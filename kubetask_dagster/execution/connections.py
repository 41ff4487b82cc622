"""Run workers keep their event log's database connections open.

Dagster's Postgres storages open a new connection for every statement (``NullPool``, "to prevent
accumulating connections per DagsterInstance"); only the webserver pools, and with one connection.
A run worker writes about fifteen event rows per Task, from each step's own thread, and each row
paid a TCP connect, an authentication and a server backend forked for it: the per-event round trips
behind a 1,000-Task fan-out at 2.17x its floor on Postgres against 1.53x on SQLite (BENCHMARKS.md).

A run worker is one long-lived instance, so its event log gets a pool of ``POOL_SIZE`` connections
(a pool of one, the webserver's, closes every connection a second thread returns). The run and
schedule storages keep Dagster's default: they see a few statements per run. The pooled connections
live as long as the run (an agent's hours), so a deployment sizes Postgres's ``max_connections`` for
them (docs/operations.md).

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

POOL_SIZE = 4  # connections kept per run worker: steps' threads write events at the same time
MAX_OVERFLOW = 16  # opened beyond them under a burst of writes, closed when returned
POOL_RECYCLE_SECONDS = 3600


def keep_connections_open(instance: Any) -> None:
    """Pool the event log's connections of this process's instance, Postgres or SQLite (once)."""
    storage: Any = getattr(instance, "event_log_storage", None)
    if storage is None:
        return
    if type(storage).__name__ == "SqliteEventLogStorage":
        _keep_sqlite_connections_open(storage)
        return
    if type(storage).__module__.split(".")[0] != "dagster_postgres":
        return
    from sqlalchemy.pool import NullPool

    engine = storage._engine  # dagster-postgres 0.29's engine attribute (pinned with dagster 1.13)
    if not isinstance(engine.pool, NullPool):
        return  # pooled already (a second run in this process, or the webserver's own setting)
    from dagster_postgres.utils import create_pg_engine

    storage._engine = create_pg_engine(
        storage.postgres_url,
        getattr(storage, "_token_provider", None),
        isolation_level="AUTOCOMMIT",
        pool_size=POOL_SIZE,
        max_overflow=MAX_OVERFLOW,
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
