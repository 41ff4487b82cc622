"""What the bridge tells about each WorkspaceConfig from its Task cache: the ``running`` and ``queued``
counts of its status, and the metrics per WorkspaceConfig (Tasks by state, time spent queued, Task
duration by outcome).

The counts are level-based (computed from the cache on each pass, never incremented), and a status
is written only when its counts changed, as a merge patch of those two fields alone: the run
workers' conditional writes of the rest of the status (rate limit, quota, spend) are not overwritten."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from kubetask import objects, vocabulary
from kubetask.api import TaskPhase
from kubetask.objects import Key

from . import metrics
from .cache import ObjectStore, WorkspaceLimits
from .kube import WORKSPACE_CONFIGS, Gone, KubeApi
from .tasks import BY_WORKSPACE, workspace_of


def task_counts(tasks: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """``running`` and ``queued`` (waiting to start: for a slot, a rate limit, the quota or the budget)."""
    phases = [objects.phase_of(t) for t in tasks]
    return {"running": phases.count(TaskPhase.RUNNING.value), "queued": phases.count(TaskPhase.QUEUED.value)}


class WorkspaceCounts:
    """Writes ``status.running`` and ``status.queued`` of each known WorkspaceConfig when they change,
    and sets the ``kubetask_workspace_tasks`` gauges on every pass."""

    def __init__(self, kube: KubeApi, tasks: ObjectStore, workspaces: WorkspaceLimits):
        self._kube = kube
        self._tasks = tasks
        self._workspaces = workspaces
        self._written: dict[Key, dict[str, int]] = {}

    def periodic(self) -> None:
        known = set(self._workspaces.known())
        for key in [k for k in self._written if k not in known]:
            del self._written[key]
            for state in ("running", "queued"):
                metrics.WORKSPACE_TASKS.remove(*key, state)
        for key in known:
            counts = task_counts(self._tasks.by_index(BY_WORKSPACE, key))
            for state, value in counts.items():
                metrics.WORKSPACE_TASKS.labels(*key, state).set(value)
            if self._written.get(key) == counts:
                continue
            try:
                self._kube.patch_status(WORKSPACE_CONFIGS, key[0], key[1], None, counts)
            except Gone:
                continue
            self._written[key] = counts


class TaskTimings:
    """A listener of the Task cache observing how long Tasks wait Queued and how long they take.

    The time a Task entered Queued is this process's observation: after a restart, a Task already
    Queued is timed from when this bridge first saw it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._queued_since: dict[tuple[str, str, str], float] = {}

    def __call__(self, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        obj = new or old
        if obj is None:
            return
        meta = objects.meta(obj)
        key = (meta.get("namespace") or "", meta.get("name") or "", meta.get("uid") or "")
        labels = (key[0], workspace_of(obj))
        phase = objects.phase_of(new) if new is not None else None
        if phase == TaskPhase.QUEUED.value:
            self._queued_since.setdefault(key, self._clock())
        elif key in self._queued_since:
            metrics.TIME_QUEUED.labels(*labels).observe(self._clock() - self._queued_since.pop(key))
        was_terminal = old is not None and objects.phase_of(old) in vocabulary.TASK_TERMINAL
        if new is not None and old is not None and phase in vocabulary.TASK_TERMINAL and not was_terminal:
            seconds = _duration(objects.status(new))
            if seconds is not None:
                metrics.TASK_DURATION.labels(*labels, phase).observe(seconds)


def _duration(status: Mapping[str, Any]) -> float | None:
    try:
        start = datetime.fromisoformat(str(status["startTime"]))
        end = datetime.fromisoformat(str(status["completionTime"]))
    except (KeyError, ValueError):
        return None
    return max(0.0, (end - start).total_seconds())
