"""Opt-in: SQLite connections without fsync, for the local stack's Dagster storage.

Dagster's SQLite event log opens a connection per event and closes it, which checkpoints the WAL
and fsyncs; a BatchRun's run worker spends most of its time there (py-spy on a 1,000-Task run).
``PRAGMA synchronous=OFF`` removes the fsyncs: 200 mapped steps ran in 10 s instead of 37 s in a
paired run. An application crash cannot corrupt the database; an operating-system crash or power
loss can, so this is for a laptop's or CI's throw-away ``DAGSTER_HOME`` only: the local stack's
``dagster.yaml`` asks for it through ``ForkingRunLauncher``'s ``sqlite_synchronous`` (the daemon, the
zygote and so every run worker); deployments use Postgres and never do.
"""

from __future__ import annotations

import sqlalchemy

MODES = {"OFF", "NORMAL", "FULL", "EXTRA"}
_listener = None  # the installed connect hook, once


def _set_synchronous(mode: str):
    def on_connect(dbapi_connection, _record) -> None:
        if type(dbapi_connection).__module__.startswith("sqlite3"):
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA synchronous={mode}")
            cursor.close()

    return on_connect


def apply(mode: str | None) -> str | None:
    """Set ``PRAGMA synchronous=<mode>`` on every SQLite connection this process opens from now on
    (once per process; None or empty: leave SQLite's default). The mode applied, or None."""
    global _listener
    mode = (mode or "").upper()
    if not mode or _listener is not None:
        return None
    if mode not in MODES:
        raise ValueError(f"sqlite_synchronous must be one of {sorted(MODES)}, not {mode!r}")
    _listener = _set_synchronous(mode)
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", _listener)
    return mode
