"""Old home of the Dagster adapter, now ``crd_bridge.dagster.client``; kept for importers outside the
bridge's own tests (``tests/unit/test_schedules.py``). Nothing in ``crd_bridge`` imports it."""

from .dagster.client import DagsterClient, DagsterError, DagsterRejected, DagsterUnavailable, RunInfo, RunNotFound

__all__ = ["DagsterClient", "DagsterError", "DagsterRejected", "DagsterUnavailable", "RunInfo", "RunNotFound"]
