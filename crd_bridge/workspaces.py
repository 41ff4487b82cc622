"""WorkspaceConfig status from the Task cache: how many of its Tasks run, and how many wait, now.

The counts are level-based (computed from the cache on each pass, never incremented), and a status
is written only when its counts changed, as a merge patch of those two fields alone: the run
workers' conditional writes of the rest of the status (rate limit, quota, spend) are not overwritten."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from kubetask import objects
from kubetask.api import TaskPhase
from kubetask.objects import Key

from .cache import ObjectStore, WorkspaceLimits
from .kube import WORKSPACE_CONFIGS, Gone, KubeApi
from .tasks import BY_WORKSPACE

log = logging.getLogger(__name__)


def task_counts(tasks: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """``running`` and ``queued`` (waiting to start: for a slot, a rate limit, the quota or the budget)."""
    phases = [objects.phase_of(t) for t in tasks]
    return {"running": phases.count(TaskPhase.RUNNING.value), "queued": phases.count(TaskPhase.QUEUED.value)}


class WorkspaceCounts:
    """Writes ``status.running`` and ``status.queued`` of each known WorkspaceConfig when they change."""

    def __init__(self, kube: KubeApi, tasks: ObjectStore, workspaces: WorkspaceLimits):
        self._kube = kube
        self._tasks = tasks
        self._workspaces = workspaces
        self._written: dict[Key, dict[str, int]] = {}

    def periodic(self) -> None:
        known = set(self._workspaces.known())
        for key in [k for k in self._written if k not in known]:
            del self._written[key]
        for key in known:
            counts = task_counts(self._tasks.by_index(BY_WORKSPACE, key))
            if self._written.get(key) == counts:
                continue
            try:
                self._kube.patch_status(WORKSPACE_CONFIGS, key[0], key[1], None, counts)
            except Gone:
                continue
            self._written[key] = counts
