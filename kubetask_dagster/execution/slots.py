"""``maxConcurrentTasks`` of a WorkspaceConfig as a Dagster pool shared by every run.

A Task whose WorkspaceConfig sets ``maxConcurrentTasks`` holds a slot of the pool
``kubetask/<namespace>/<workspaceconfig>`` (limit = ``maxConcurrentTasks``) while its agent Job
runs, in a standalone run or as a step of any BatchRun. Claims live in Dagster's instance storage,
so they are atomic across run workers and visible on the UI's Pools page; the daemon frees the
slots of a run that died (``run_monitoring.free_slots_after_run_end_seconds``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dagster import DagsterExecutionInterruptedError, DagsterInstance

CLAIM_POLL_SECONDS = 1.0


def pool_key(namespace: str, workspace_config: str) -> str:
    return f"kubetask/{namespace}/{workspace_config}"


class WorkspaceSlots:
    """Claims and frees one step's slot in a WorkspaceConfig's pool."""

    def __init__(self, instance: DagsterInstance, key: str, limit: int, run_id: str, step_key: str):
        self.storage = instance.event_log_storage
        self.key = key
        self.limit = limit
        self.run_id = run_id
        self.step_key = step_key

    def _ensure_limit(self) -> None:
        if self.storage.get_concurrency_info(self.key).slot_count != self.limit:
            self.storage.set_concurrency_slots(self.key, self.limit)

    def acquire(self, *, on_wait: Callable[[], None], interrupted: Callable[[], bool]) -> None:
        """Block until this step holds a slot; ``on_wait`` runs once if it has to wait."""
        self._ensure_limit()
        waited = False
        while not self.storage.claim_concurrency_slot(self.key, self.run_id, self.step_key).is_claimed:
            if interrupted():
                self.release()
                raise DagsterExecutionInterruptedError()
            if not waited:
                on_wait()
                waited = True
            time.sleep(CLAIM_POLL_SECONDS)

    def release(self) -> None:
        self.storage.free_concurrency_slot_for_step(self.run_id, self.step_key)
