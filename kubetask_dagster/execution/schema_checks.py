"""Dagster's SQL storages re-derive facts about their schema that cannot change while a process lives;
a process asks once.

- Alembic's migration scripts: every storage a process opens, and on SQLite every new run's own
  event-log file, checks (and a new file stamps) its schema revision, and alembic reads every
  migration script of the storage to do so, ~60 ms of CPU each time. In the local webserver that was
  the biggest part of launching a lone Task's run: the run's event-log file is created by the
  ``PIPELINE_STARTING`` write, checked and stamped, before the run worker is forked
  (BENCHMARKS.md, "Task latency").
- The runs table's columns: the run storage reflects them at every run lookup and every run status
  event (``has_run_stats_index_cols``), on a connection of its own.

Both are read-only facts of the installed Dagster and of a schema that only ``dagster instance
migrate`` changes, which runs in a process of its own.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

_shared_lock = threading.Lock()
_shared = False


def share_migration_scripts() -> None:
    """From now on this process reads each alembic script directory once (idempotent)."""
    global _shared
    with _shared_lock:
        if _shared:
            return
        from alembic.script import ScriptDirectory

        read: dict[str, ScriptDirectory] = {}
        from_config = ScriptDirectory.from_config

        def shared_from_config(config: Any) -> ScriptDirectory:
            location = config.get_main_option("script_location")
            with _shared_lock:
                if location not in read:
                    read[location] = from_config(config)
                return read[location]

        # Dagster's check_alembic_revision and alembic's own stamp both look the method up when called.
        ScriptDirectory.from_config = staticmethod(shared_from_config)  # type: ignore[method-assign,assignment]
        _shared = True


def remember_run_table_columns(run_storage: Any) -> None:
    """The run storage reflects the runs table's columns once, not at every lookup (idempotent)."""
    if hasattr(run_storage, "has_run_stats_index_cols") and "has_run_stats_index_cols" not in vars(run_storage):
        run_storage.has_run_stats_index_cols = functools.cache(run_storage.has_run_stats_index_cols)
