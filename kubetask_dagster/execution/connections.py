"""Run workers keep their event log's database connection open.

Dagster's Postgres storages open a new connection for every statement, except in the webserver
(``NullPool``, "to prevent accumulating connections per DagsterInstance"). A run worker writes about
fifteen event rows per Task, and each one paid a TCP connect, an authentication and a server backend
forked for it: the per-event round trips that made a 1,000-Task fan-out 2.17x its floor on Postgres
against 1.53x on SQLite (BENCHMARKS.md). A run worker is one long-lived instance, so its event log
takes the webserver's setting: one pooled connection, overflow for the steps' threads, recycled hourly.
The run and schedule storages keep Dagster's default: they see a few statements per run, and each
pooled connection is held for the run's whole life (an agent's hours), so a deployment needs
``max_connections`` above ``maxConcurrentRuns`` plus what the webserver and daemon hold
(docs/operations.md). SQLite's event log ignores it (its base class's no-op).
"""

from __future__ import annotations

from typing import Any

POOL_RECYCLE_SECONDS = 3600
MAX_OVERFLOW = 10  # connections beyond the pooled one, while step threads write at the same time
NO_STATEMENT_TIMEOUT = 0  # the webserver's 15 s guards interactive queries; a run's writes must not fail for it
_DONE_FLAG = "_kubetask_connections_kept_open"


def keep_connections_open(instance: Any) -> None:
    """Pool the event log's connection of this process's instance (once; ``None`` is ignored)."""
    if instance is None or getattr(instance, _DONE_FLAG, False):
        return
    instance.event_log_storage.optimize_for_webserver(
        statement_timeout=NO_STATEMENT_TIMEOUT, pool_recycle=POOL_RECYCLE_SECONDS, max_overflow=MAX_OVERFLOW
    )
    setattr(instance, _DONE_FLAG, True)
