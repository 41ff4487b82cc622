"""Reconcile Tasks with Dagster runs: submit, queue, stop, and repair what a dead run left behind.

Level-based: every decision is taken from the Task as it is now (and Dagster's run as it is now), so a
missed watch event, a restart or a retry only delays work, never duplicates it.

Parts:

- ``KubeApi``: the few Kubernetes calls the logic makes (``KubernetesApi`` is the real one; tests
  pass a fake). Status writes carry the ``metadata.resourceVersion`` of the object the decision was
  taken on, so a concurrent write by the run's ops answers 409 (``Conflict``) and the bridge re-reads
  and decides again: it never overwrites a phase the run already advanced.
- ``TaskStore``: the bridge's cache of Tasks, fed by kopf's watch events, the bridge's own status
  writes and periodic re-lists. It answers the queue questions (active Tasks per WorkspaceConfig,
  FIFO order of the waiting ones) without API calls.
- ``WorkspaceLimits``: ``maxConcurrentTasks`` per WorkspaceConfig, from watch events with a GET fallback.
- ``WorkQueue``: de-duplicating, delay-capable queue of Task keys (one worker per key at a time, like
  client-go's workqueue).
- ``Reconciler``: the decisions. ``observe`` takes watch events, ``reconcile_key`` runs in workers and
  never raises, ``periodic`` is the drift/queue/retry pass, ``sweep_orphans`` terminates active runs
  whose Task is gone, ``relist`` repairs the cache.

Tasks carrying ``kubetask.io/executed-by`` belong to a BatchRun's run: the bridge never submits, stops
or repairs them (they still count against their WorkspaceConfig's limit when active).
"""

from __future__ import annotations

import heapq
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Protocol

from kubetask import vocabulary
from kubetask.domain import status as task_status
from kubetask.api import GROUP, VERSION, TaskPhase
from kubetask.api.workspace import DEFAULT_WORKSPACE_CONFIG

from . import metrics
from .reconcile import Conflict, Gone, ReconcileLoop

CRASH_AFTER_SUBMIT_ENV = "KUBETASK_BRIDGE_CRASH_AFTER_SUBMIT"
from .dagster_client import ACTIVE_STATUSES, DagsterError, DagsterRejected, DagsterUnavailable, RunInfo, RunNotFound

log = logging.getLogger(__name__)

API_VERSION = f"{GROUP}/{VERSION}"
TASKS = "tasks"
WORKSPACE_CONFIGS = "workspaceconfigs"

TAG_KIND = "kubetask.io/kind"
TAG_NAMESPACE = "kubetask.io/namespace"
TAG_NAME = "kubetask.io/name"
TAG_UID = "kubetask.io/uid"
TAG_GENERATION = "kubetask.io/generation"

PENDING = TaskPhase.PENDING.value
QUEUED = TaskPhase.QUEUED.value
RUNNING = TaskPhase.RUNNING.value
FAILED = TaskPhase.FAILED.value
STOPPED = TaskPhase.STOPPED.value
TERMINAL = frozenset(p.value for p in TaskPhase if p.terminal)

# Condition reasons the bridge writes.
REASON_SUBMITTED = "RunSubmitted"
REASON_QUEUED = "WorkspaceConcurrencyLimit"
REASON_UNAVAILABLE = "DagsterUnavailable"
REASON_SUBMIT_FAILED = "RunSubmissionFailed"
REASON_STOP = "StopRequested"
REASON_RUN_FAILED = "RunFailed"
REASON_RUN_CANCELED = "RunCanceled"
REASON_NO_STATUS = "RunEndedWithoutStatus"
REASON_RUN_NOT_FOUND = "RunNotFound"
REASON_JOB_DELETED = "JobDeleted"

Key = tuple[str, str]
Obj = dict[str, Any]


# --- reading a Task ------------------------------------------------------------------------------


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj["metadata"]
    return meta["namespace"], meta["name"]


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def uid_of(obj: Mapping[str, Any]) -> str:
    return _meta(obj).get("uid") or ""


def generation_of(obj: Mapping[str, Any]) -> int:
    return int(_meta(obj).get("generation") or 1)


def phase_of(obj: Mapping[str, Any]) -> str | None:
    return _status(obj).get("phase")


def run_id_of(obj: Mapping[str, Any]) -> str | None:
    return _status(obj).get("dagsterRunId") or None


def workspace_of(obj: Mapping[str, Any]) -> str:
    return (obj.get("spec") or {}).get("workspaceConfigRef") or DEFAULT_WORKSPACE_CONFIG


def is_terminal(obj: Mapping[str, Any]) -> bool:
    return phase_of(obj) in TERMINAL


def executed_elsewhere(obj: Mapping[str, Any]) -> bool:
    """Created and run by a BatchRun's run: not the bridge's to run."""
    return bool((_meta(obj).get("annotations") or {}).get(vocabulary.EXECUTED_BY))


def stop_requested(obj: Mapping[str, Any]) -> bool:
    return str((_meta(obj).get("annotations") or {}).get(vocabulary.STOP, "")).strip().lower() == "true"


def being_deleted(obj: Mapping[str, Any]) -> bool:
    return bool(_meta(obj).get("deletionTimestamp"))


def is_active(obj: Mapping[str, Any]) -> bool:
    """Holds a WorkspaceConfig slot: Pending or Running with a run."""
    return phase_of(obj) in (PENDING, RUNNING) and run_id_of(obj) is not None


def is_waiting(obj: Mapping[str, Any]) -> bool:
    """Needs a run from the bridge (and a slot, when its WorkspaceConfig has a limit)."""
    return not (
        executed_elsewhere(obj) or is_terminal(obj) or run_id_of(obj) or being_deleted(obj) or stop_requested(obj)
    )


def fifo_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = _meta(obj)
    return meta.get("creationTimestamp") or "", meta.get("name") or ""


def run_tags(obj: Mapping[str, Any]) -> dict[str, str]:
    """The tags of the Task's run (the contract with the code location); all strings."""
    ns, name = key_of(obj)
    return {
        TAG_KIND: "Task",
        TAG_NAMESPACE: ns,
        TAG_NAME: name,
        TAG_UID: uid_of(obj),
        TAG_GENERATION: str(generation_of(obj)),
    }


def identity_tags(obj: Mapping[str, Any]) -> dict[str, str]:
    """The tags that identify this Task's run for its current generation (idempotent submission)."""
    return {TAG_UID: uid_of(obj), TAG_GENERATION: str(generation_of(obj))}


def run_config(obj: Mapping[str, Any]) -> dict[str, Any]:
    ns, name = key_of(obj)
    ref = {"namespace": ns, "name": name, "uid": uid_of(obj), "generation": generation_of(obj)}
    return {"ops": {"prepare_task": {"config": ref}}}


def _rv(obj: Mapping[str, Any] | None) -> int | None:
    try:
        return int(_meta(obj or {}).get("resourceVersion"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _created_epoch(obj: Mapping[str, Any]) -> float | None:
    text = _meta(obj).get("creationTimestamp")
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _name(obj: Mapping[str, Any]) -> str:
    meta = _meta(obj)
    return f"{meta.get('namespace')}/{meta.get('name')}"


# --- Kubernetes --------------------------------------------------------------------------------


class KubeApi(Protocol):
    """The Kubernetes calls of the bridge."""

    def get_task(self, namespace: str, name: str) -> Obj | None: ...

    def list_tasks(self, namespaces: Sequence[str]) -> list[Obj]: ...

    def patch_task_status(self, namespace: str, name: str, resource_version: str | None, status: Mapping[str, Any]) -> Obj:
        """Merge-patch ``/status`` with ``resourceVersion`` as precondition; raises Conflict or Gone."""
        ...

    def get_workspace_config(self, namespace: str, name: str) -> Obj | None: ...

    def list_workspace_configs(self, namespaces: Sequence[str]) -> list[Obj]: ...

    def job_exists(self, namespace: str, name: str) -> bool: ...

    def emit_event(self, obj: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None: ...


class KubernetesApi:
    """``KubeApi`` over the official kubernetes client (one ApiClient, thread-safe use)."""

    TIMEOUT = (5, 30)  # connect, read

    def __init__(self, api_client: Any, component: str = "kubetask-bridge"):
        import kubernetes

        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._batch = kubernetes.client.BatchV1Api(api_client)
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._api_exception = kubernetes.client.exceptions.ApiException
        self._component = component
        self._host = socket.gethostname()

    def _get(self, plural: str, namespace: str, name: str) -> Obj | None:
        try:
            return self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name, _request_timeout=self.TIMEOUT)
        except self._api_exception as e:
            if e.status == 404:
                return None
            raise

    def _list(self, plural: str, namespaces: Sequence[str]) -> list[Obj]:
        items: list[Obj] = []
        for ns in namespaces or [None]:
            token: str | None = None
            while True:
                kwargs: dict[str, Any] = {"limit": 500, "_request_timeout": (5, 120)}
                if token:
                    kwargs["_continue"] = token
                if ns is None:
                    page = self._custom.list_cluster_custom_object(GROUP, VERSION, plural, **kwargs)
                else:
                    page = self._custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural, **kwargs)
                items.extend(page.get("items") or [])
                token = (page.get("metadata") or {}).get("continue")
                if not token:
                    break
        return items

    def get_task(self, namespace: str, name: str) -> Obj | None:
        return self._get(TASKS, namespace, name)

    def list_tasks(self, namespaces: Sequence[str]) -> list[Obj]:
        return self._list(TASKS, namespaces)

    def patch_task_status(self, namespace: str, name: str, resource_version: str | None, status: Mapping[str, Any]) -> Obj:
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            return self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, TASKS, name, body,
                _content_type="application/merge-patch+json", _request_timeout=self.TIMEOUT,
            )
        except self._api_exception as e:
            if e.status == 409:
                raise Conflict(f"{namespace}/{name} changed since resourceVersion {resource_version}") from None
            if e.status == 404:
                raise Gone(f"{namespace}/{name}") from None
            raise

    def get_workspace_config(self, namespace: str, name: str) -> Obj | None:
        return self._get(WORKSPACE_CONFIGS, namespace, name)

    def list_workspace_configs(self, namespaces: Sequence[str]) -> list[Obj]:
        return self._list(WORKSPACE_CONFIGS, namespaces)

    def job_exists(self, namespace: str, name: str) -> bool:
        try:
            self._batch.read_namespaced_job(name, namespace, _request_timeout=self.TIMEOUT)
            return True
        except self._api_exception as e:
            if e.status == 404:
                return False
            raise

    def emit_event(self, obj: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        meta = _meta(obj)
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion") or API_VERSION,
                "kind": obj.get("kind") or "Task",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": self._component, "host": self._host},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self._core.create_namespaced_event(meta["namespace"], body, _request_timeout=self.TIMEOUT)


# --- caches ------------------------------------------------------------------------------------


class TaskStore:
    """Thread-safe cache of Tasks by (namespace, name), indexed by (namespace, WorkspaceConfig)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.RLock()
        self._objs: dict[Key, Obj] = {}
        self._touched: dict[Key, float] = {}
        self._by_ws: dict[Key, set[Key]] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._objs)

    def get(self, key: Key) -> Obj | None:
        with self._lock:
            return self._objs.get(key)

    def put(self, obj: Obj) -> Obj | None:
        """Store ``obj`` unless the cache holds a newer version of the same object; the previous version."""
        key = key_of(obj)
        with self._lock:
            old = self._objs.get(key)
            if old is not None and uid_of(old) == uid_of(obj):
                new_rv, old_rv = _rv(obj), _rv(old)
                if new_rv is not None and old_rv is not None and new_rv < old_rv:
                    return old
            self._unindex(key, old)
            self._objs[key] = obj
            self._touched[key] = self._clock()
            self._by_ws.setdefault((key[0], workspace_of(obj)), set()).add(key)
            return old

    def remove(self, key: Key, uid: str | None = None) -> Obj | None:
        """Forget the object at ``key`` (only if its uid is ``uid``, when given)."""
        with self._lock:
            old = self._objs.get(key)
            if old is None or (uid is not None and uid_of(old) != uid):
                return None
            self._unindex(key, old)
            del self._objs[key]
            self._touched.pop(key, None)
            return old

    def _unindex(self, key: Key, old: Obj | None) -> None:
        if old is None:
            return
        members = self._by_ws.get((key[0], workspace_of(old)))
        if members is not None:
            members.discard(key)
            if not members:
                del self._by_ws[(key[0], workspace_of(old))]

    def snapshot(self) -> list[Obj]:
        with self._lock:
            return list(self._objs.values())

    def in_workspace(self, namespace: str, workspace: str) -> list[Obj]:
        with self._lock:
            return [self._objs[k] for k in self._by_ws.get((namespace, workspace), ())]

    def active_count(self, namespace: str, workspace: str, exclude_uid: str | None = None) -> int:
        return sum(1 for t in self.in_workspace(namespace, workspace) if is_active(t) and uid_of(t) != exclude_uid)

    def waiting(self, namespace: str, workspace: str) -> list[Obj]:
        """Tasks of the WorkspaceConfig that wait for a run, oldest first (FIFO)."""
        return sorted((t for t in self.in_workspace(namespace, workspace) if is_waiting(t)), key=fifo_key)

    def replace(self, items: Iterable[Obj], listed_since: float, namespaces: Sequence[str] = ()) -> list[Obj]:
        """Merge a full list taken after ``listed_since``; drop cached objects it lacks that no event
        touched since. Returns the dropped objects."""
        listed = {key_of(o): o for o in items}
        dropped: list[Obj] = []
        with self._lock:
            for obj in listed.values():
                self.put(obj)
            for key in list(self._objs):
                if namespaces and key[0] not in namespaces:
                    continue
                if key not in listed and self._touched.get(key, 0.0) < listed_since:
                    old = self.remove(key)
                    if old is not None:
                        dropped.append(old)
        return dropped


class WorkspaceLimits:
    """``spec.maxConcurrentTasks`` by (namespace, name): watched objects, else a GET (misses cached briefly)."""

    def __init__(self, kube: KubeApi, clock: Callable[[], float] = time.monotonic, miss_ttl: float = 10.0):
        self._kube = kube
        self._clock = clock
        self._miss_ttl = miss_ttl
        self._lock = threading.Lock()
        self._known: dict[Key, int | None] = {}
        self._missing: dict[Key, float] = {}

    @staticmethod
    def limit_of(obj: Mapping[str, Any]) -> int | None:
        value = (obj.get("spec") or {}).get("maxConcurrentTasks")
        return int(value) if value is not None else None

    def put(self, obj: Mapping[str, Any]) -> tuple[bool, int | None]:
        """Record a WorkspaceConfig; (changed, limit)."""
        key = key_of(obj)
        limit = self.limit_of(obj)
        with self._lock:
            changed = key not in self._known or self._known[key] != limit
            self._known[key] = limit
            self._missing.pop(key, None)
        return changed, limit

    def remove(self, key: Key) -> None:
        with self._lock:
            self._known.pop(key, None)
            self._missing[key] = self._clock() + self._miss_ttl

    def cached(self, namespace: str, name: str) -> tuple[bool, int | None]:
        """(known, limit) without an API call."""
        key = (namespace, name)
        with self._lock:
            if key in self._known:
                return True, self._known[key]
            if self._missing.get(key, 0.0) > self._clock():
                return True, None
        return False, None

    def get(self, namespace: str, name: str) -> int | None:
        known, limit = self.cached(namespace, name)
        if known:
            return limit
        obj = self._kube.get_workspace_config(namespace, name)
        if obj is None:
            with self._lock:
                self._missing[(namespace, name)] = self._clock() + self._miss_ttl
            return None
        return self.put(obj)[1]

    def replace(self, items: Iterable[Obj]) -> list[Key]:
        """Set the known WorkspaceConfigs from a full list; the keys whose limit changed."""
        changed: list[Key] = []
        seen: set[Key] = set()
        for obj in items:
            seen.add(key_of(obj))
            if self.put(obj)[0]:
                changed.append(key_of(obj))
        with self._lock:
            for key in [k for k in self._known if k not in seen]:
                del self._known[key]
                changed.append(key)
        return changed


class WorkQueue:
    """De-duplicating queue of keys with delayed adds; a key is handed to one worker at a time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[Key] = deque()
        self._queued: set[Key] = set()
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()
        self._delayed: list[tuple[float, int, Key]] = []
        self._seq = 0
        self._shutdown = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def add(self, key: Key) -> None:
        with self._cond:
            self._add(key)

    def _add(self, key: Key) -> None:
        if self._shutdown:
            return
        if key in self._processing:
            self._dirty.add(key)
            return
        if key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)
            self._cond.notify()

    def add_after(self, key: Key, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            self._seq += 1
            heapq.heappush(self._delayed, (self._clock() + delay, self._seq, key))
            self._cond.notify()

    def _promote(self) -> float | None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            self._add(heapq.heappop(self._delayed)[2])
        return self._delayed[0][0] - now if self._delayed else None

    def get(self, timeout: float | None = None) -> Key | None:
        """The next key (mark it processing), or None after ``timeout`` seconds or on shutdown."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                next_due = self._promote()
                if self._shutdown:
                    return None
                if self._queue:
                    key = self._queue.popleft()
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                waits = [w for w in (next_due, None if deadline is None else deadline - self._clock()) if w is not None]
                if deadline is not None and deadline - self._clock() <= 0:
                    return None
                self._cond.wait(min(waits) if waits else None)

    def done(self, key: Key) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._add(key)

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()


# --- the decisions -----------------------------------------------------------------------------


class Reconciler(ReconcileLoop):
    """What the bridge does about each Task. Thread-safe; ``reconcile_key`` never raises."""

    KIND = "Task"

    def __init__(
        self,
        kube: KubeApi,
        dagster: Any,
        store: TaskStore,
        limits: WorkspaceLimits,
        *,
        job: str = "task_job",
        run_url: Callable[[str], str] = lambda run_id: f"http://127.0.0.1:3000/runs/{run_id}",
        grace: float = 5.0,
        namespaces: Sequence[str] = (),
        enqueue: Callable[[Key, float], None] | None = None,
        clock: Callable[[], float] = time.time,
        terminate_every: float = 30.0,
    ):
        self.kube = kube
        self.dagster = dagster
        self.store = store
        self.limits = limits
        self.job = job
        self.run_url = run_url
        self.grace = grace
        self.namespaces = tuple(namespaces)
        self._enqueue = enqueue or (lambda key, delay: None)
        self.clock = clock
        self.terminate_every = terminate_every
        self._lock = threading.Lock()
        self._ws_locks: dict[Key, threading.Lock] = {}
        self._failures: dict[Key, tuple[int, float]] = {}  # key -> (failures, when the next retry is due)
        self._dagster_failing = False
        self._deleted: dict[Key, list[Obj]] = {}
        self._ended: dict[str, float] = {}  # run id -> when the bridge first saw it finished (no endTime)
        self._terminated: dict[str, float] = {}  # run id -> when the bridge last asked to terminate it
        self._stop_announced: dict[str, float] = {}  # run id -> when StopRequested was recorded

    # --- plumbing ------------------------------------------------------------------------------

    def enqueue(self, key: Key, delay: float = 0.0) -> None:
        self._enqueue(key, delay)

    def _ws_lock(self, namespace: str, workspace: str) -> threading.Lock:
        with self._lock:
            return self._ws_locks.setdefault((namespace, workspace), threading.Lock())

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    def _event(self, obj: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        try:
            self.kube.emit_event(obj, reason, message, warning=warning)
        except Exception as e:  # an Event is a courtesy; the status is the record
            log.warning("Task %s: could not record Event %s: %s", _name(obj), reason, e)

    def _patch(self, obj: Obj, patch: Mapping[str, Any]) -> Obj:
        ns, name = key_of(obj)
        updated = self.kube.patch_task_status(ns, name, _meta(obj).get("resourceVersion"), patch)
        self.store.put(updated)
        if "phase" in patch:
            metrics.TRANSITIONS.labels(patch["phase"]).inc()
        return updated

    # --- watch events --------------------------------------------------------------------------

    def observe(self, event_type: str | None, obj: Obj) -> None:
        """A watch event for a Task (``None`` type: seen in the initial listing). Non-blocking."""
        try:
            key = key_of(obj)
        except (KeyError, TypeError):
            return
        if event_type == "DELETED":
            old = self.store.remove(key, uid_of(obj))
            gone = old if old is not None and (_rv(old) or 0) > (_rv(obj) or 0) else obj
            if not executed_elsewhere(gone) and not is_terminal(gone):
                with self._lock:
                    self._deleted.setdefault(key, []).append(gone)
                self.enqueue(key)
            self.release(key[0], workspace_of(gone))  # a slot or a place in the queue freed
            return
        old = self.store.put(obj)
        current = self.store.get(key) or obj
        if old is not None and is_active(old) and not is_active(current):
            self.release(key[0], workspace_of(old))  # a slot freed
        if old is not None and workspace_of(old) != workspace_of(current):
            self.release(key[0], workspace_of(old))
        if not executed_elsewhere(current) and not is_terminal(current):
            self.enqueue(key)

    def observe_workspace(self, event_type: str | None, obj: Obj) -> None:
        """A watch event for a WorkspaceConfig: a changed limit may free (or take) slots."""
        try:
            key = key_of(obj)
        except (KeyError, TypeError):
            return
        if event_type == "DELETED":
            self.limits.remove(key)
            self.release(*key)
            return
        changed, _ = self.limits.put(obj)
        if changed:
            self.release(*key)

    def release(self, namespace: str, workspace: str) -> None:
        """Re-check the Tasks waiting for a slot of this WorkspaceConfig (the ones that may get one)."""
        waiting = self.store.waiting(namespace, workspace)
        known, limit = self.limits.cached(namespace, workspace)
        if known and limit is not None:
            free = max(1, limit - self.store.active_count(namespace, workspace))
            waiting = waiting[:free]
        for t in waiting:
            self.enqueue(key_of(t))

    # --- one Task ------------------------------------------------------------------------------

    def _fetch(self, key: Key) -> Obj | None:
        return self.kube.get_task(*key)

    def _reconcile_once(self, task: Obj) -> float | None:
        if executed_elsewhere(task) or is_terminal(task):
            return None
        run_id = run_id_of(task)
        if being_deleted(task):
            if run_id:
                self._terminate(task, run_id, "deleted")
            return None
        if stop_requested(task):
            return self._stop(task, run_id)
        if run_id is None:
            return self._admit(task)
        return self._follow(task, run_id)

    # --- submission and the queue --------------------------------------------------------------

    def _admit(self, task: Obj) -> float | None:
        ns, _ = key_of(task)
        workspace = workspace_of(task)
        limit = self.limits.get(ns, workspace)
        try:
            if limit is None:
                return self._submit(task)
            with self._ws_lock(ns, workspace):
                task = self.store.get(key_of(task)) or task  # our own writes land in the store
                if run_id_of(task) or is_terminal(task):
                    return None
                active = self.store.active_count(ns, workspace, exclude_uid=uid_of(task))
                ahead = sum(1 for t in self.store.waiting(ns, workspace) if fifo_key(t) < fifo_key(task) and uid_of(t) != uid_of(task))
                if active + ahead >= limit:
                    return self._queue(task, workspace, limit)
                return self._submit(task)
        except DagsterUnavailable as e:
            metrics.SUBMISSION_ERRORS.labels("unavailable").inc()
            self._note_unavailable(task, e)
            raise

    def _queue(self, task: Obj, workspace: str, limit: int) -> None:
        plural = "" if limit == 1 else "s"
        message = f'WorkspaceConfig "{workspace}" allows at most {limit} concurrent Task{plural}; waiting for a free slot'
        current = _status(task)
        ready = next((c for c in current.get("conditions") or [] if c.get("type") == task_status.READY), {})
        if phase_of(task) == QUEUED and ready.get("reason") == REASON_QUEUED and ready.get("message") == message:
            return None
        patch = task_status.queued(current, message=message, now=self._now(), reason=REASON_QUEUED)
        patch["observedGeneration"] = generation_of(task)
        self._patch(task, patch)
        if phase_of(task) != QUEUED:
            self._event(task, "Queued", message)
            log.info("Task %s queued: %s", _name(task), message)
        return None

    def _submit(self, task: Obj) -> None:
        ns, name = key_of(task)
        adopted = self._existing_run(task)
        if adopted is not None:
            run_id = adopted.run_id
            metrics.ADOPTED.inc()
            log.info("Task %s: found its run %s (%s) by tags; not submitting again", _name(task), run_id, adopted.status)
        else:
            started = time.monotonic()
            try:
                run_id = self.dagster.submit_run(self.job, run_config(task), run_tags(task))
            except DagsterRejected as e:
                metrics.SUBMISSION_ERRORS.labels("rejected").inc()
                message = f"Dagster refused to run job {self.job}: {e}"
                self._patch(task, task_status.failed(_status(task), reason=REASON_SUBMIT_FAILED, message=message, now=self._now()))
                self._event(task, REASON_SUBMIT_FAILED, message, warning=True)
                log.warning("Task %s: %s", _name(task), message)
                return None
            metrics.SUBMIT_LATENCY.observe(time.monotonic() - started)
            metrics.SUBMISSIONS.inc()
            if os.environ.get(CRASH_AFTER_SUBMIT_ENV) == "1":  # fault injection for the crash-safety test
                log.warning("%s is set: exiting between submit and status write", CRASH_AFTER_SUBMIT_ENV)
                os._exit(137)
            created = _created_epoch(task)
            if created is not None:
                metrics.TASK_TO_RUN.observe(max(0.0, self.clock() - created))
        url = self.run_url(run_id)
        current = _status(task)
        if phase_of(task) in (None, PENDING, QUEUED):
            patch = task_status.submitted(current, run_id=run_id, run_url=url, generation=generation_of(task), now=self._now())
        else:  # the run already moved the Task on (e.g. Running): only record the run
            patch = {"dagsterRunId": run_id, "dagsterRunUrl": url}
        try:
            self._patch(task, patch)
        except Conflict:
            # The next decision finds this run by its tags; nothing is submitted twice.
            raise
        verb = "found" if adopted is not None else "submitted"
        self._event(task, REASON_SUBMITTED, f"Dagster run {run_id} {verb}: {url}")
        log.info("Task %s: Dagster run %s %s", _name(task), run_id, verb)
        return None

    def _existing_run(self, task: Obj) -> RunInfo | None:
        """A run already made for this Task's generation (a restart between submit and status write)."""
        runs = self.dagster.find_runs(identity_tags(task))
        active = [r for r in runs if not r.finished]
        return (active or runs or [None])[0]

    def _note_unavailable(self, task: Obj, error: Exception) -> None:
        """Say on the Task why it has no run yet (once; the message does not change per attempt)."""
        current = _status(task)
        message = "Dagster is unreachable; the Task is submitted when it is back"
        ready = next((c for c in current.get("conditions") or [] if c.get("type") == task_status.READY), {})
        if ready.get("reason") == REASON_UNAVAILABLE:
            return
        now = self._now()
        conditions = task_status.set_condition(current.get("conditions"), task_status.READY, "False", REASON_UNAVAILABLE, message, now, generation_of(task))
        patch: dict[str, Any] = {"conditions": conditions, "message": message}
        if phase_of(task) is None:
            patch["phase"] = PENDING
        try:
            self._patch(task, patch)
            self._event(task, REASON_UNAVAILABLE, f"{message} ({error})", warning=True)
        except Exception as e:  # the retry matters more than this note
            log.debug("Task %s: could not note Dagster's absence: %s", _name(task), e)

    # --- stop and deletion ---------------------------------------------------------------------

    def _terminate(self, obj: Mapping[str, Any], run_id: str, cause: str) -> bool:
        """Ask Dagster to terminate ``run_id`` (at most once per ``terminate_every`` seconds)."""
        now = self.clock()
        with self._lock:
            last = self._terminated.get(run_id)
        if last is not None and now - last < self.terminate_every:
            return False
        outcome = self.dagster.terminate_run(run_id)
        with self._lock:
            self._terminated[run_id] = now
        metrics.TERMINATIONS.labels(cause).inc()
        log.info("Task %s: asked Dagster to terminate run %s (%s): %s", _name(obj), run_id, cause, outcome)
        return True

    def _stop(self, task: Obj, run_id: str | None) -> float | None:
        if run_id is not None:
            self._terminate(task, run_id, "stop")
            with self._lock:
                first = run_id not in self._stop_announced
                self._stop_announced.setdefault(run_id, self.clock())
            if first:
                self._event(task, REASON_STOP, f"stop requested: terminating Dagster run {run_id}")
            # The run's ops record Stopped; if the run ends without doing so, _follow writes it.
            return self._follow(task, run_id)
        # No run recorded; one may exist if the bridge stopped between submitting and writing status.
        try:
            for run in self.dagster.find_runs(identity_tags(task)):
                if not run.finished:
                    self._terminate(task, run.run_id, "stop")
        except DagsterUnavailable as e:
            log.warning("Task %s: stopping without checking Dagster for a run (%s)", _name(task), e)
        message = "stopped on request (kubetask.io/stop) before its run started"
        self._patch(task, task_status.stopped(_status(task), reason=REASON_STOP, message=message, now=self._now()))
        self._event(task, REASON_STOP, message)
        log.info("Task %s: %s", _name(task), message)
        return None

    def _handle_deleted(self, obj: Obj) -> float | None:
        """A Task is gone: terminate its active run (the Job goes with the Task through owner references)."""
        run_id = run_id_of(obj)
        try:
            if run_id:
                targets = [run_id]
            else:
                targets = [r.run_id for r in self.dagster.find_runs({TAG_UID: uid_of(obj)}) if not r.finished]
            for target in targets:
                self._terminate(obj, target, "deleted")
            return None
        except DagsterUnavailable:
            with self._lock:
                self._deleted.setdefault(key_of(obj), []).append(obj)
            return self._backoff(key_of(obj))

    # --- following a run -----------------------------------------------------------------------

    def _follow(self, task: Obj, run_id: str) -> float | None:
        """Drift check: a finished run whose Task is not terminal gets its terminal status after a grace."""
        try:
            run: RunInfo | None = self.dagster.get_run(run_id)
        except RunNotFound:
            run = None
        if run is not None and not run.finished:
            with self._lock:
                self._ended.pop(run_id, None)
            return None
        if run is not None:
            with self._lock:
                first_seen = self._ended.setdefault(run_id, self.clock())
            ended = run.end_time or first_seen
            wait = ended + self.grace - self.clock()
            if wait > 0:
                return min(wait, self.grace) + 0.1
            successor = self._successor_run(task, run_id)
            if successor is not None:
                return self._adopt(task, successor)
        return self._settle(key_of(task), run_id, run)

    def _successor_run(self, task: Obj, run_id: str) -> RunInfo | None:
        """An active run of the same Task other than ``run_id`` (a re-execution from Dagster's UI)."""
        for run in self.dagster.find_runs({TAG_UID: uid_of(task)}):
            if run.run_id != run_id and not run.finished:
                return run
        return None

    def _adopt(self, task: Obj, run: RunInfo) -> None:
        url = self.run_url(run.run_id)
        self._patch(task, {"dagsterRunId": run.run_id, "dagsterRunUrl": url})
        self._event(task, "RunAdopted", f"following Dagster run {run.run_id} (started from Dagster): {url}")
        return None

    def _settle(self, key: Key, run_id: str, run: RunInfo | None) -> float | None:
        """Write the terminal status a finished (or missing) run did not write, on a fresh read."""
        fresh = self.kube.get_task(*key)
        if fresh is None:
            self.store.remove(key)
            return None
        self.store.put(fresh)
        if executed_elsewhere(fresh) or is_terminal(fresh) or run_id_of(fresh) != run_id:
            return None  # the run's own write won, or something else took over
        ns, _ = key
        current = _status(fresh)
        job = current.get("jobName")
        if run is None:
            phase, reason = FAILED, REASON_RUN_NOT_FOUND
            message = f"Dagster has no run {run_id} (was the Dagster instance reset?)"
        elif run.status == "CANCELED":
            phase, reason = STOPPED, REASON_RUN_CANCELED
            message = f"Dagster run {run_id} was canceled"
        elif phase_of(fresh) == RUNNING and job and not self.kube.job_exists(ns, job):
            phase, reason = FAILED, REASON_JOB_DELETED
            message = f"Job {job} was deleted and Dagster run {run_id} ended ({run.status})"
        elif run.status == "FAILURE":
            phase, reason = FAILED, REASON_RUN_FAILED
            try:
                detail = self.dagster.failure_message(run_id)
            except DagsterError as e:
                detail = None
                log.info("Task %s: no failure message for run %s: %s", _name(fresh), run_id, e)
            message = f"Dagster run {run_id} failed" + (f": {detail}" if detail else " without recording the Task's outcome")
        else:
            phase, reason = FAILED, REASON_NO_STATUS
            message = f"Dagster run {run_id} ended ({run.status}) without recording the Task's outcome"
        builder = task_status.stopped if phase == STOPPED else task_status.failed
        self._patch(fresh, builder(current, reason=reason, message=message, now=self._now()))
        self._event(fresh, reason, message, warning=phase == FAILED)
        metrics.DRIFT_CORRECTIONS.labels(reason).inc()
        log.warning("Task %s: %s -> %s (%s)", _name(fresh), message, phase, reason)
        with self._lock:
            self._ended.pop(run_id, None)
        return None

    # --- periodic work -------------------------------------------------------------------------

    def periodic(self) -> None:
        """One pass: gauges; Tasks whose run finished or vanished; waiting Tasks that may get a slot or
        retry a submission; stop requests to repeat. Only enqueues: the workers do the work. Keys
        waiting for a backoff retry are skipped, except right after Dagster came back."""
        tasks = self.store.snapshot()
        phases: dict[str, int] = {}
        for t in tasks:
            phases[phase_of(t) or "None"] = phases.get(phase_of(t) or "None", 0) + 1
        for phase in [p.value for p in TaskPhase] + ["None"]:
            metrics.TASKS.labels(phase).set(phases.get(phase, 0))
        metrics.QUEUED.set(phases.get(QUEUED, 0))
        recovered = self._dagster_recovered(any(is_waiting(t) for t in tasks))
        enqueue = self.enqueue if recovered else self._enqueue_unless_backing_off

        ours = [t for t in tasks if not executed_elsewhere(t) and not is_terminal(t)]
        with_run = [t for t in ours if run_id_of(t)]
        if with_run:
            try:
                runs: dict[str, RunInfo] | None = self.dagster.get_runs(run_id_of(t) for t in with_run)  # type: ignore[misc]
            except DagsterError as e:
                log.debug("periodic pass: no run statuses from Dagster: %s", e)
                runs = None
            for t in with_run:
                if stop_requested(t) or being_deleted(t):
                    enqueue(key_of(t))
                elif runs is not None:
                    run = runs.get(run_id_of(t))  # type: ignore[arg-type]
                    if run is None or run.finished:
                        enqueue(key_of(t))

        groups: dict[Key, list[Obj]] = {}
        for t in ours:
            if run_id_of(t) is None:
                if stop_requested(t) or being_deleted(t):
                    enqueue(key_of(t))
                elif is_waiting(t):
                    groups.setdefault((key_of(t)[0], workspace_of(t)), []).append(t)
        for (ns, ws), members in groups.items():
            known, limit = self.limits.cached(ns, ws)
            members.sort(key=fifo_key)
            free = len(members) if not known or limit is None else max(1, limit - self.store.active_count(ns, ws))
            for i, t in enumerate(members):
                if i < free or phase_of(t) != QUEUED:
                    enqueue(key_of(t))

        with self._lock:
            deleted = list(self._deleted)
        for key in deleted:  # runs of deleted Tasks still to terminate (Dagster was away)
            enqueue(key)
        self._prune()

    def _enqueue_unless_backing_off(self, key: Key) -> None:
        if not self._backing_off(key):
            self.enqueue(key)

    def _dagster_recovered(self, probe: bool) -> bool:
        """True on the first pass after Dagster answers again (then every backoff is reset). While it is
        failing and ``probe`` (someone waits for a submission), one cheap query checks it once the
        client's down interval has passed."""
        failing = bool(getattr(self.dagster, "failing", False))
        if failing and probe and getattr(self.dagster, "available", False):
            try:
                self.dagster.location_state()
            except DagsterError:
                pass
            failing = bool(getattr(self.dagster, "failing", False))
        recovered = self._dagster_failing and not failing
        self._dagster_failing = failing
        if recovered:
            log.info("Dagster answers again: retrying every waiting Task now")
            with self._lock:
                self._failures.clear()
        return recovered

    def _prune(self, keep: float = 3600.0) -> None:
        horizon = self.clock() - keep
        with self._lock:
            for table in (self._terminated, self._stop_announced, self._ended):
                for run_id in [r for r, t in table.items() if t < horizon]:
                    del table[run_id]

    def sweep_orphans(self) -> int:
        """Terminate active runs of ``task_job`` whose Task no longer exists (deleted while the bridge
        was away); the number terminated."""
        runs = self.dagster.find_runs({TAG_KIND: "Task"}, statuses=[s for s in ACTIVE_STATUSES if s != "CANCELING"], limit=1000)
        count = 0
        for run in runs:
            ns, name, uid = run.tags.get(TAG_NAMESPACE), run.tags.get(TAG_NAME), run.tags.get(TAG_UID)
            if not (ns and name and uid) or (self.namespaces and ns not in self.namespaces):
                continue
            try:
                obj = self.kube.get_task(ns, name)
            except Exception as e:
                log.info("orphan sweep: cannot read Task %s/%s: %s", ns, name, e)
                continue
            if obj is None or uid_of(obj) != uid:
                try:
                    self.dagster.terminate_run(run.run_id)
                except DagsterError as e:
                    log.info("orphan sweep: could not terminate run %s: %s", run.run_id, e)
                    continue
                metrics.TERMINATIONS.labels("orphan").inc()
                count += 1
                log.warning("terminated Dagster run %s: its Task %s/%s (uid %s) no longer exists", run.run_id, ns, name, uid)
        return count

    def relist(self, listed_since: float) -> None:
        """Repair the caches from full lists (taken after ``listed_since`` on the store's clock)."""
        items = self.kube.list_tasks(self.namespaces)
        dropped = self.store.replace(items, listed_since, self.namespaces)
        for obj in dropped:
            log.info("Task %s is gone (noticed by re-list)", _name(obj))
            self.observe("DELETED", obj)
        for key in self.limits.replace(self.kube.list_workspace_configs(self.namespaces)):
            self.release(*key)
