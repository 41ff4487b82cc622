"""Reconcile BatchRuns with runs of Dagster's ``batch_job``: submit, keep progress, pause, stop, rerun, finish.

Level-based like the Task part (``tasks``): every decision is taken from the BatchRun as it is now,
its Tasks as the bridge's cache holds them, and Dagster's runs as they are now; a missed event, a
restart or a retry only delays work. Status writes carry the ``resourceVersion`` the decision was
taken on, so a concurrent write by the run's ops (``expand_batch``, ``summarize_batch``) answers 409
and the bridge re-reads and decides again.

Who writes what on a BatchRun:

- the bridge submits ``batch_job`` (idempotently: runs are looked up by tags first) for a BatchRun
  without ``status.dagsterRunId``, unless it carries ``kubetask.io/executed-by`` (a schedule tick or an
  asset materialisation created it and runs it itself); it records the run id, phase Pending and the
  conditions ``Succeeded=Unknown``/``Ready=False`` (reason ``RunSubmitted``). For an executed-by
  BatchRun it looks the creator's run up by the same tags and records it (so that a run that dies
  before ``expand_batch`` still ends the BatchRun);
- ``expand_batch`` creates the Tasks, then writes phase Running, ``startTime`` and ``progress.total``;
- while the run is active the bridge keeps ``progress``, ``failedTasks`` and the phase (Running or
  Paused, from the ``kubetask.io/pause`` annotation) from the cached Tasks labelled
  ``kubetask.io/batch-run=<name>`` and owned by the BatchRun: counts are recomputed, never
  incremented; a write happens only when something changed, at most once per ``debounce`` seconds;
- ``summarize_batch`` writes the final summary when every step succeeded;
- when the run has ended the bridge writes the final status from a fresh list of the Tasks: phase
  (a terminal phase written by an op is kept), counters, ``completionTime`` and the conditions
  ``Succeeded``/``Ready`` with a reason (``AllTasksCompleted``, ``TasksFailed``, ``RunFailed``,
  ``RunCanceled``, ``StopRequested``, ``RunNotFound``) whose message names the run. Tasks the run never
  finished (never started because the run failed or was terminated) are marked ``Stopped`` with reason
  ``RunEnded`` first, so every Task is terminal and the counters add up to ``total``. A BatchRun is
  *finalized* once its ``Succeeded`` condition is True/False and names its current run.

Stop (``kubetask.io/stop: "true"``) terminates the run; the ops delete the running Jobs and mark their
Tasks Stopped; the bridge then writes Stopped. Deleting a BatchRun terminates its run (owner references
collect the Tasks and their Jobs). ``kubetask.io/rerun: failed`` on a finalized BatchRun launches
Dagster's re-execution FROM_FAILURE of its run (only the failed and never-started steps run again),
switches the status to the new run (phase Running), and removes the annotation (and a stop
annotation). Order: stop annotation removed, re-execution launched (or found by its
``dagster/parent_run_id`` tag after a restart), rerun annotation removed, status written; a crash at
any point is repaired by the next decision. A re-execution started from Dagster's UI (a newer run
carrying the BatchRun's uid tag, seen by the periodic query of active ``batch_job`` runs or when the
current run ends) is adopted the same way, and so is a run that an op records on a finished BatchRun.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Protocol

from kubetask import vocabulary
from kubetask.domain import batches
from kubetask.domain import status as task_status
from kubetask.api import GROUP, VERSION, BatchRunPhase, TaskPhase
from kubetask.api.batch import DEFAULT_PARALLELISM
from kubetask.domain.batches import index_of

from . import metrics
from .reconcile import ReconcileLoop
from .dagster_client import (
    ACTIVE_STATUSES,
    PARENT_RUN_ID_TAG,
    DagsterError,
    DagsterRejected,
    DagsterUnavailable,
    RunInfo,
    RunNotFound,
)
from .tasks import (
    TAG_GENERATION,
    TAG_KIND,
    TAG_NAME,
    TAG_NAMESPACE,
    TAG_UID,
    Conflict,
    Gone,
    Key,
    KubernetesApi,
    Obj,
    being_deleted,
    executed_elsewhere,
    generation_of,
    key_of,
    phase_of,
    run_id_of,
    stop_requested,
    uid_of,
)

log = logging.getLogger(__name__)

BATCHRUNS = "batchruns"
BATCHES = "batches"
TASKS = "tasks"
KIND = "BatchRun"
TAG_BATCH = "kubetask.io/batch"

PENDING = BatchRunPhase.PENDING.value
RUNNING = BatchRunPhase.RUNNING.value
PAUSED = BatchRunPhase.PAUSED.value
COMPLETED = BatchRunPhase.COMPLETED.value
FAILED = BatchRunPhase.FAILED.value
STOPPED = BatchRunPhase.STOPPED.value
TERMINAL = frozenset(p.value for p in BatchRunPhase if p.terminal)
TASK_TERMINAL = frozenset(p.value for p in TaskPhase if p.terminal)

RERUN_FAILED = "failed"
CANCELED = "CANCELED"
_FOLLOWED = [s for s in ACTIVE_STATUSES if s != "CANCELING"]

# Reasons (conditions and Events) the bridge writes on BatchRuns.
REASON_SUBMITTED = "RunSubmitted"
REASON_UNAVAILABLE = "DagsterUnavailable"
REASON_SUBMIT_FAILED = "RunSubmissionFailed"
REASON_STOP = "StopRequested"
REASON_COMPLETED = "AllTasksCompleted"
REASON_TASKS_FAILED = "TasksFailed"
REASON_RUN_FAILED = "RunFailed"
REASON_RUN_CANCELED = "RunCanceled"
REASON_RUN_NOT_FOUND = "RunNotFound"
REASON_RERUN = "RerunStarted"
REASON_NOTHING_TO_RERUN = "NothingToRerun"
REASON_RERUN_REFUSED = "RerunRefused"
REASON_ADOPTED = "RunAdopted"
REASON_PAUSED = "Paused"
REASON_RESUMED = "Resumed"
# On a Task the run never finished.
REASON_RUN_ENDED = "RunEnded"

# Ready/Succeeded reasons that are not an outcome (they never finalize a BatchRun).
_NOT_AN_OUTCOME = {REASON_SUBMITTED, REASON_UNAVAILABLE, REASON_RERUN, REASON_ADOPTED}
_PROGRESS_KEYS = ("total", "pending", "queued", "running", "completed", "failed", "stopped")


# --- reading a BatchRun ------------------------------------------------------------------------


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return _meta(obj).get("annotations") or {}


def _name(obj: Mapping[str, Any]) -> str:
    meta = _meta(obj)
    return f"{meta.get('namespace')}/{meta.get('name')}"


def _rv(obj: Mapping[str, Any] | None) -> int | None:
    try:
        return int(_meta(obj or {}).get("resourceVersion"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def is_terminal(obj: Mapping[str, Any]) -> bool:
    return phase_of(obj) in TERMINAL


def paused(obj: Mapping[str, Any]) -> bool:
    return str(_annotations(obj).get(vocabulary.PAUSE, "")).strip().lower() == "true"


def rerun_request(obj: Mapping[str, Any]) -> str | None:
    """The value of ``kubetask.io/rerun`` (None when absent)."""
    value = _annotations(obj).get(vocabulary.RERUN)
    return None if value is None else str(value).strip()


def total_of(obj: Mapping[str, Any]) -> int | None:
    """``status.progress.total``: set by ``expand_batch`` once every Task exists."""
    value = (_status(obj).get("progress") or {}).get("total")
    return int(value) if value is not None else None


def condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in _status(obj).get("conditions") or [] if c.get("type") == type_), None)


def finalized(obj: Mapping[str, Any]) -> bool:
    """Terminal, with the outcome of its current run recorded by the bridge (``Succeeded`` True/False
    naming the run). A terminal phase an op wrote is not final until the run has ended."""
    if not is_terminal(obj):
        return False
    succeeded = condition(obj, task_status.SUCCEEDED)
    if succeeded is None or succeeded.get("status") not in ("True", "False"):
        return False
    run_id = run_id_of(obj)
    return run_id is None or run_id in str(succeeded.get("message") or "")


def batchrun_of(task: Mapping[str, Any]) -> str | None:
    return (_meta(task).get("labels") or {}).get(vocabulary.LABEL_BATCH_RUN) or None


def owner_uids(task: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(o.get("uid") or "" for o in _meta(task).get("ownerReferences") or [] if o.get("kind") == KIND)


def task_reason(task: Mapping[str, Any]) -> str | None:
    """The Task's outcome reason (its ``Succeeded`` condition), as ``summarize`` reads it."""
    for c in _status(task).get("conditions") or []:
        if c.get("type") == task_status.SUCCEEDED:
            return c.get("reason")
    return None


def run_tags(obj: Mapping[str, Any]) -> dict[str, str]:
    """Tags of the BatchRun's run (strings); ``kubetask.io/batch`` when it runs a Batch by reference."""
    ns, name = key_of(obj)
    tags = {
        TAG_KIND: KIND,
        TAG_NAMESPACE: ns,
        TAG_NAME: name,
        TAG_UID: uid_of(obj),
        TAG_GENERATION: str(generation_of(obj)),
    }
    ref = (obj.get("spec") or {}).get("batchRef")
    if ref:
        tags[TAG_BATCH] = str(ref)
    return tags


def identity_tags(obj: Mapping[str, Any]) -> dict[str, str]:
    """The tags that find this BatchRun's run for its current generation (idempotent submission)."""
    return {TAG_KIND: KIND, TAG_UID: uid_of(obj), TAG_GENERATION: str(generation_of(obj))}


def _default_run_config(namespace: str, name: str, uid: str, parallelism: int) -> dict[str, Any]:
    from kubetask_dagster.jobs import batch_run_config  # imports Dagster: only when a BatchRun is submitted

    return batch_run_config(namespace, name, uid, parallelism)


def _normal_progress(progress: Mapping[str, Any] | None) -> dict[str, int]:
    progress = progress or {}
    return {k: int(progress.get(k) or 0) for k in _PROGRESS_KEYS}


# --- Kubernetes --------------------------------------------------------------------------------


class BatchRunKubeApi(Protocol):
    """The Kubernetes calls of the BatchRun logic (``KubernetesBatchRunApi``; tests pass a fake)."""

    def get_batchrun(self, namespace: str, name: str) -> Obj | None: ...

    def list_batchruns(self, namespaces: Sequence[str]) -> list[Obj]: ...

    def patch_batchrun_status(self, namespace: str, name: str, resource_version: str | None, status: Mapping[str, Any]) -> Obj:
        """Merge-patch ``/status`` with ``resourceVersion`` as precondition; raises Conflict or Gone."""
        ...

    def patch_batchrun_metadata(self, namespace: str, name: str, resource_version: str | None, metadata: Mapping[str, Any]) -> Obj:
        """Merge-patch ``metadata`` (e.g. remove an annotation with a null) with ``resourceVersion`` as precondition."""
        ...

    def get_batch(self, namespace: str, name: str) -> Obj | None: ...

    def list_batchrun_tasks(self, namespace: str, batchrun: str) -> list[Obj]:
        """Tasks labelled ``kubetask.io/batch-run=<batchrun>`` (fresh from the API server)."""
        ...

    def get_task(self, namespace: str, name: str) -> Obj | None: ...

    def patch_task_status(self, namespace: str, name: str, resource_version: str | None, status: Mapping[str, Any]) -> Obj: ...

    def emit_event(self, obj: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None: ...


class KubernetesBatchRunApi(KubernetesApi):
    """``BatchRunKubeApi`` over the official kubernetes client (extends the Task part's adapter)."""

    def _merge_patch(self, plural: str, namespace: str, name: str, body: dict[str, Any], *, status: bool) -> Obj:
        call = self._custom.patch_namespaced_custom_object_status if status else self._custom.patch_namespaced_custom_object
        try:
            return call(GROUP, VERSION, namespace, plural, name, body,
                        _content_type="application/merge-patch+json", _request_timeout=self.TIMEOUT)
        except self._api_exception as e:
            rv = (body.get("metadata") or {}).get("resourceVersion")
            if e.status == 409:
                raise Conflict(f"{namespace}/{name} changed since resourceVersion {rv}") from None
            if e.status == 404:
                raise Gone(f"{namespace}/{name}") from None
            raise

    def get_batchrun(self, namespace: str, name: str) -> Obj | None:
        return self._get(BATCHRUNS, namespace, name)

    def list_batchruns(self, namespaces: Sequence[str]) -> list[Obj]:
        return self._list(BATCHRUNS, namespaces)

    def patch_batchrun_status(self, namespace: str, name: str, resource_version: str | None, status: Mapping[str, Any]) -> Obj:
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return self._merge_patch(BATCHRUNS, namespace, name, body, status=True)

    def patch_batchrun_metadata(self, namespace: str, name: str, resource_version: str | None, metadata: Mapping[str, Any]) -> Obj:
        meta = dict(metadata)
        if resource_version:
            meta["resourceVersion"] = resource_version
        return self._merge_patch(BATCHRUNS, namespace, name, {"metadata": meta}, status=False)

    def get_batch(self, namespace: str, name: str) -> Obj | None:
        return self._get(BATCHES, namespace, name)

    def list_batchrun_tasks(self, namespace: str, batchrun: str) -> list[Obj]:
        items: list[Obj] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"label_selector": f"{vocabulary.LABEL_BATCH_RUN}={batchrun}", "limit": 500,
                                      "_request_timeout": (5, 120)}
            if token:
                kwargs["_continue"] = token
            page = self._custom.list_namespaced_custom_object(GROUP, VERSION, namespace, TASKS, **kwargs)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items


# --- caches ------------------------------------------------------------------------------------


class BatchRunStore:
    """Thread-safe cache of BatchRuns by (namespace, name); keeps the newest resourceVersion of an object."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._objs: dict[Key, Obj] = {}
        self._touched: dict[Key, float] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._objs)

    def get(self, key: Key) -> Obj | None:
        with self._lock:
            return self._objs.get(key)

    def put(self, obj: Obj) -> Obj | None:
        key = key_of(obj)
        with self._lock:
            old = self._objs.get(key)
            if old is not None and uid_of(old) == uid_of(obj):
                new_rv, old_rv = _rv(obj), _rv(old)
                if new_rv is not None and old_rv is not None and new_rv < old_rv:
                    return old
            self._objs[key] = obj
            self._touched[key] = self._clock()
            return old

    def remove(self, key: Key, uid: str | None = None) -> Obj | None:
        with self._lock:
            old = self._objs.get(key)
            if old is None or (uid is not None and uid_of(old) != uid):
                return None
            del self._objs[key]
            self._touched.pop(key, None)
            return old

    def snapshot(self) -> list[Obj]:
        with self._lock:
            return list(self._objs.values())

    def replace(self, items: Iterable[Obj], listed_since: float, namespaces: Sequence[str] = ()) -> list[Obj]:
        """Merge a full list taken after ``listed_since``; drop (and return) cached objects it lacks
        that no event touched since."""
        listed = {key_of(o): o for o in items}
        for obj in listed.values():
            self.put(obj)
        dropped: list[Obj] = []
        with self._lock:
            for key in list(self._objs):
                if namespaces and key[0] not in namespaces:
                    continue
                if key not in listed and self._touched.get(key, 0.0) < listed_since:
                    dropped.append(self._objs.pop(key))
                    self._touched.pop(key, None)
        return dropped


class BatchTaskIndex:
    """The Tasks of each BatchRun, as ``(name, phase, reason)`` rows, from the bridge's Task cache.

    Fed with the cache's current version of a Task on every Task event; rebuilt from the cache on a
    re-list. Only Tasks labelled ``kubetask.io/batch-run`` are indexed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[Key, dict[str, tuple[str, tuple[str, ...], str | None, str | None]]] = {}
        self._where: dict[Key, Key] = {}  # task key -> BatchRun key

    def _unlink(self, task_key: Key) -> Key | None:
        where = self._where.pop(task_key, None)
        if where is not None:
            members = self._rows.get(where)
            if members is not None:
                members.pop(task_key[1], None)
                if not members:
                    del self._rows[where]
        return where

    def _link(self, task: Mapping[str, Any]) -> Key | None:
        br = batchrun_of(task)
        if br is None:
            return None
        ns, name = key_of(task)
        row = (uid_of(task), owner_uids(task), phase_of(task), task_reason(task))
        self._rows.setdefault((ns, br), {})[name] = row
        self._where[(ns, name)] = (ns, br)
        return ns, br

    def put(self, task: Mapping[str, Any]) -> set[Key]:
        """Index (or re-index) a Task; the BatchRun keys whose rows changed."""
        try:
            task_key = key_of(task)
        except (KeyError, TypeError):
            return set()
        with self._lock:
            old = self._unlink(task_key)
            new = self._link(task)
        return {k for k in (old, new) if k is not None}

    def remove(self, task_key: Key, uid: str | None = None) -> set[Key]:
        with self._lock:
            where = self._where.get(task_key)
            if where is None:
                return set()
            row = self._rows.get(where, {}).get(task_key[1])
            if uid is not None and row is not None and row[0] != uid:
                return set()
            self._unlink(task_key)
            return {where}

    def rows(self, namespace: str, batchrun: str, owner_uid: str | None = None) -> list[tuple[str, str | None, str | None]]:
        """``(name, phase, reason)`` of the BatchRun's Tasks (owned by ``owner_uid`` when given), by index."""
        with self._lock:
            members = list((self._rows.get((namespace, batchrun)) or {}).items())
        rows = [(name, phase, reason) for name, (_, owners, phase, reason) in members if owner_uid is None or owner_uid in owners]
        return sorted(rows, key=lambda r: (index_of(r[0]) if index_of(r[0]) is not None else 1 << 30, r[0]))

    def rebuild(self, snapshot: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        """Replace the index with the Tasks ``snapshot()`` returns (taken under the index's lock, so an
        event indexed concurrently is not lost)."""
        with self._lock:
            self._rows = {}
            self._where = {}
            for task in snapshot():
                try:
                    self._link(task)
                except (KeyError, TypeError):
                    continue


# --- the decisions -----------------------------------------------------------------------------

_MISSING: Any = object()


class BatchRunReconciler(ReconcileLoop):
    """What the bridge does about each BatchRun. Thread-safe; ``reconcile_key`` never raises."""

    KIND = "BatchRun"

    def __init__(
        self,
        kube: BatchRunKubeApi,
        dagster: Any,
        store: BatchRunStore,
        index: BatchTaskIndex,
        *,
        task_store: Any = None,
        job: str = "batch_job",
        run_url: Callable[[str], str] = lambda run_id: f"http://127.0.0.1:3000/runs/{run_id}",
        run_config: Callable[[str, str, str, int], dict[str, Any]] = _default_run_config,
        grace: float = 5.0,
        debounce: float = 1.0,
        namespaces: Sequence[str] = (),
        enqueue: Callable[[Key, float], None] | None = None,
        clock: Callable[[], float] = time.time,
        terminate_every: float = 30.0,
    ):
        self.kube = kube
        self.dagster = dagster
        self.store = store
        self.index = index
        self.task_store = task_store
        self.job = job
        self.run_url = run_url
        self.run_config = run_config
        self.grace = grace
        self.debounce = debounce
        self.namespaces = tuple(namespaces)
        self._enqueue = enqueue or (lambda key, delay: None)
        self.clock = clock
        self.terminate_every = terminate_every
        self._lock = threading.Lock()
        self._failures: dict[Key, tuple[int, float]] = {}
        self._deleted: dict[Key, list[Obj]] = {}
        self._runs: dict[str, RunInfo | None] = {}  # run id -> last known RunInfo (None: Dagster has no such run)
        self._active: dict[str, list[RunInfo]] = {}  # BatchRun uid -> its active runs, newest first
        self._last_write: dict[Key, float] = {}  # key -> when the bridge last wrote its progress
        self._wake: dict[Key, float] = {}  # key -> when a debounced progress write is due
        self._ended: dict[str, float] = {}  # run id -> when first seen finished (runs without endTime)
        self._not_before: dict[str, float] = {}  # run id -> when its outcome may be written (end + grace)
        self._terminated: dict[str, float] = {}
        self._stop_announced: dict[str, float] = {}

    # --- plumbing ------------------------------------------------------------------------------

    def enqueue(self, key: Key, delay: float = 0.0) -> None:
        self._enqueue(key, delay)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    def _event(self, obj: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        try:
            self.kube.emit_event(obj, reason, message, warning=warning)
        except Exception as e:  # an Event is a courtesy; the status is the record
            detail = f"{e.status} {e.reason}" if hasattr(e, "status") and hasattr(e, "reason") else str(e)
            log.warning("BatchRun %s: could not record Event %s: %s", _name(obj), reason, detail)

    def _write(self, obj: Obj, patch: Mapping[str, Any], kind: str) -> Obj:
        ns, name = key_of(obj)
        updated = self.kube.patch_batchrun_status(ns, name, _meta(obj).get("resourceVersion"), patch)
        self.store.put(updated)
        metrics.BATCHRUN_STATUS_WRITES.labels(kind).inc()
        return updated

    def _clear_annotations(self, obj: Obj, names: Iterable[str]) -> Obj:
        present = [n for n in names if n in _annotations(obj)]
        if not present:
            return obj
        ns, name = key_of(obj)
        updated = self.kube.patch_batchrun_metadata(
            ns, name, _meta(obj).get("resourceVersion"), {"annotations": {n: None for n in present}}
        )
        self.store.put(updated)
        return updated

    def _conditions(self, obj: Mapping[str, Any], status: str, reason: str, message: str) -> list[dict[str, Any]]:
        """``Succeeded`` (``status``) and ``Ready`` (True only when Completed) with one reason and message."""
        now, generation = self._now(), generation_of(obj)
        ready = "True" if status == "True" else "False"
        current = _status(obj).get("conditions")
        conditions = task_status.set_condition(current, task_status.SUCCEEDED, status, reason, message, now, generation)
        return task_status.set_condition(conditions, task_status.READY, ready, reason, message, now, generation)

    def _later(self, key: Key, due: float) -> float | None:
        """Seconds until ``due`` for the worker to look again, or None when a look is already due by then
        (a burst of Task events then costs one look, not one delayed look per event)."""
        now = self.clock()
        with self._lock:
            scheduled = self._wake.get(key)
            if scheduled is not None and now < scheduled <= due + 1e-6:
                return None
            self._wake[key] = due
        return due - now + 0.01

    def _reopened(self, obj: Obj, run_id: str, reason: str, message: str) -> dict[str, Any]:
        """The status of a BatchRun that a (new) run executes again."""
        return {
            "dagsterRunId": run_id,
            "dagsterRunUrl": self.run_url(run_id),
            "phase": PAUSED if paused(obj) else RUNNING,
            "completionTime": None,
            "conditions": self._conditions(obj, "Unknown", reason, message),
        }

    # --- watch events --------------------------------------------------------------------------

    def observe(self, event_type: str | None, obj: Obj) -> None:
        """A watch event for a BatchRun (``None`` type: seen in a listing). Non-blocking."""
        try:
            key = key_of(obj)
        except (KeyError, TypeError):
            return
        if event_type == "DELETED":
            old = self.store.remove(key, uid_of(obj))
            gone = old if old is not None and (_rv(old) or 0) > (_rv(obj) or 0) else obj
            with self._lock:
                self._last_write.pop(key, None)
                self._wake.pop(key, None)
                if not finalized(gone) and (run_id_of(gone) or not is_terminal(gone)):
                    self._deleted.setdefault(key, []).append(gone)
                    deleted = True
                else:
                    deleted = False
            if deleted:
                self.enqueue(key)
            return
        self.store.put(obj)
        self.enqueue(key)

    def observe_task(self, event_type: str | None, obj: Obj) -> None:
        """A watch event for a Task: re-index it and wake its BatchRun. Call it after the Task part has
        stored the event, so that the cache's (newest) version is indexed."""
        try:
            task_key = key_of(obj)
        except (KeyError, TypeError):
            return
        if event_type == "DELETED":
            affected = self.index.remove(task_key, uid_of(obj))
        else:
            current = self.task_store.get(task_key) if self.task_store is not None else None
            if current is None or uid_of(current) != uid_of(obj):
                current = obj
            affected = self.index.put(current)
        for key in affected:
            if self.store.get(key) is not None:
                self.enqueue(key)

    # --- one BatchRun --------------------------------------------------------------------------

    def _fetch(self, key: Key) -> Obj | None:
        return self.kube.get_batchrun(*key)

    def _reconcile_once(self, obj: Obj) -> float | None:
        run_id = run_id_of(obj)
        if being_deleted(obj):
            if run_id and not finalized(obj):
                self._terminate(obj, run_id, "batchrun-deleted")
            return None
        if run_id is None:
            if is_terminal(obj):
                return None
            if stop_requested(obj):
                return self._stop_without_run(obj)
            if executed_elsewhere(obj):
                return self._find_executor_run(obj)
            return self._submit(obj)
        if finalized(obj):
            successor = self._successor_hint(obj)
            if successor is not None:
                return self._adopt_if_newer(obj, successor)
            if rerun_request(obj) is not None:
                return self._rerun(obj)
            return None
        if stop_requested(obj):
            self._request_stop(obj, run_id)
        with self._lock:
            hint = self._runs.get(run_id, _MISSING)
            not_before = self._not_before.get(run_id)
        if hint is not _MISSING and (hint is None or hint.finished):
            if not_before is not None and self.clock() < not_before:
                return self._later(key_of(obj), not_before)  # the grace after the run's end is not over
            return self._run_ended(obj, run_id)
        if is_terminal(obj):
            return self._maybe_reopen(obj, run_id)
        return self._progress(obj)

    # --- submission ----------------------------------------------------------------------------

    def _parallelism(self, obj: Obj) -> int:
        spec = obj.get("spec") or {}
        if spec.get("parallelism"):
            return int(spec["parallelism"])
        if spec.get("batchSpec") is not None:
            return int((spec["batchSpec"] or {}).get("parallelism") or DEFAULT_PARALLELISM)
        ref = spec.get("batchRef")
        if ref:
            batch = self.kube.get_batch(key_of(obj)[0], ref)
            if batch is not None:  # a missing Batch: expand_batch fails the BatchRun with BatchNotFound
                return int((batch.get("spec") or {}).get("parallelism") or DEFAULT_PARALLELISM)
        return DEFAULT_PARALLELISM

    def _existing_run(self, obj: Obj) -> RunInfo | None:
        runs = self.dagster.find_runs(identity_tags(obj))
        active = [r for r in runs if not r.finished]
        return (active or runs or [None])[0]

    def _submit(self, obj: Obj) -> float | None:
        try:
            return self._submit_once(obj)
        except DagsterUnavailable as e:
            metrics.BATCHRUN_SUBMISSION_ERRORS.labels("unavailable").inc()
            self._note_unavailable(obj, e)
            raise

    def _submit_once(self, obj: Obj) -> float | None:
        ns, name = key_of(obj)
        existing = self._existing_run(obj)
        if existing is not None:
            run_id = existing.run_id
            metrics.BATCHRUN_ADOPTED.labels("existing").inc()
            log.info("BatchRun %s: found its run %s (%s) by tags; not submitting again", _name(obj), run_id, existing.status)
            with self._lock:
                self._runs[run_id] = existing
        else:
            parallelism = self._parallelism(obj)
            started = time.monotonic()
            try:
                run_id = self.dagster.submit_run(self.job, self.run_config(ns, name, uid_of(obj), parallelism), run_tags(obj))
            except DagsterRejected as e:
                metrics.BATCHRUN_SUBMISSION_ERRORS.labels("rejected").inc()
                message = f"Dagster refused to run job {self.job}: {e}"
                self._write(obj, {
                    "phase": FAILED,
                    "completionTime": task_status.rfc3339(self._now()),
                    "conditions": self._conditions(obj, "False", REASON_SUBMIT_FAILED, message),
                    "observedGeneration": generation_of(obj),
                }, "final")
                self._event(obj, REASON_SUBMIT_FAILED, message, warning=True)
                log.warning("BatchRun %s: %s", _name(obj), message)
                return None
            metrics.SUBMIT_LATENCY.observe(time.monotonic() - started)
            metrics.BATCHRUN_SUBMISSIONS.inc()
        url = self.run_url(run_id)
        patch: dict[str, Any] = {
            "dagsterRunId": run_id,
            "dagsterRunUrl": url,
            "observedGeneration": generation_of(obj),
            "conditions": self._conditions(obj, "Unknown", REASON_SUBMITTED, f"Dagster run {run_id} submitted"),
        }
        if phase_of(obj) is None:
            patch["phase"] = PENDING
        self._write(obj, patch, "submitted")
        verb = "found" if existing is not None else "submitted"
        self._event(obj, REASON_SUBMITTED, f"Dagster run {run_id} {verb}: {url}")
        log.info("BatchRun %s: Dagster run %s %s", _name(obj), run_id, verb)
        return None

    def _find_executor_run(self, obj: Obj) -> float | None:
        """A BatchRun its creator runs (schedule tick): expand_batch records the run; until then, look
        the run up by tags, so that a run that fails before expanding still ends the BatchRun."""
        existing = self._existing_run(obj)
        if existing is None:
            return self._progress(obj)  # a pause shows before the run starts
        patch: dict[str, Any] = {"dagsterRunId": existing.run_id, "dagsterRunUrl": self.run_url(existing.run_id)}
        if phase_of(obj) is None:
            patch["phase"] = PENDING
        self._write(obj, patch, "adopted")
        with self._lock:
            self._runs[existing.run_id] = existing
        metrics.BATCHRUN_ADOPTED.labels("existing").inc()
        self._event(obj, REASON_ADOPTED, f"following Dagster run {existing.run_id} (started by {_annotations(obj).get(vocabulary.EXECUTED_BY)}): "
                                         f"{self.run_url(existing.run_id)}")
        return None

    def _note_unavailable(self, obj: Obj, error: Exception) -> None:
        ready = condition(obj, task_status.READY) or {}
        if ready.get("reason") == REASON_UNAVAILABLE:
            return
        message = "Dagster is unreachable; the BatchRun is submitted when it is back"
        patch: dict[str, Any] = {"conditions": self._conditions(obj, "Unknown", REASON_UNAVAILABLE, message)}
        if phase_of(obj) is None:
            patch["phase"] = PENDING
        try:
            self._write(obj, patch, "submitted")
            self._event(obj, REASON_UNAVAILABLE, f"{message} ({error})", warning=True)
        except Exception as e:
            log.debug("BatchRun %s: could not note Dagster's absence: %s", _name(obj), e)

    # --- progress ------------------------------------------------------------------------------

    def summary(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Progress and failed Tasks from the cached Tasks; None before ``expand_batch`` set the total."""
        total = total_of(obj)
        if total is None:
            return None
        ns, name = key_of(obj)
        rows = self.index.rows(ns, name, uid_of(obj))
        return task_status.batchrun_summary(rows, total, paused=paused(obj), stopped=False)

    def _progress(self, obj: Obj) -> float | None:
        """Write phase (Running/Paused), progress and failedTasks when they changed, debounced."""
        key = key_of(obj)
        now = self.clock()
        with self._lock:
            last = self._last_write.get(key)
        if last is not None and now - last < self.debounce:  # look again when the second is over
            metrics.BATCHRUN_PROGRESS_SKIPPED.labels("debounced").inc()
            return self._later(key, last + self.debounce)
        current = phase_of(obj)
        summary = self.summary(obj)
        if paused(obj):
            phase = PAUSED
        elif summary is not None:
            phase = RUNNING
        else:  # not expanded yet: only a pause (or its end) shows
            phase = PENDING if current == PAUSED else current
        patch: dict[str, Any] = {}
        if phase != current and phase is not None:
            patch["phase"] = phase
        if summary is not None:
            if summary["progress"] != _normal_progress(_status(obj).get("progress")):
                patch["progress"] = summary["progress"]
            if summary["failedTasks"] != list(_status(obj).get("failedTasks") or []):
                patch["failedTasks"] = summary["failedTasks"]
        if not patch:
            metrics.BATCHRUN_PROGRESS_SKIPPED.labels("unchanged").inc()
            return None
        self._write(obj, patch, "progress")
        with self._lock:
            self._last_write[key] = now
            self._wake.pop(key, None)
        if "phase" in patch and phase == PAUSED:
            self._event(obj, REASON_PAUSED, f"{vocabulary.PAUSE} is set: no further Task starts; running Tasks finish")
        elif "phase" in patch and current == PAUSED:
            self._event(obj, REASON_RESUMED, f"{vocabulary.PAUSE} was removed: Tasks start again")
        return None

    def _maybe_reopen(self, obj: Obj, run_id: str) -> float | None:
        """Terminal, not finalized, and its run is active. If the terminal phase is an older run's
        outcome (its Succeeded condition is final) and Tasks run again, a rerun is under way (e.g. a
        re-execution of all steps, whose expand_batch recorded the new run): Running again. Otherwise
        an op wrote the outcome ahead of the run's end: wait for the end."""
        succeeded = condition(obj, task_status.SUCCEEDED)
        if succeeded is None or succeeded.get("status") not in ("True", "False"):
            return None
        ns, name = key_of(obj)
        if all(phase in TASK_TERMINAL for _, phase, _ in self.index.rows(ns, name, uid_of(obj))):
            return None
        message = f"Dagster run {run_id} executes the BatchRun again"
        self._write(obj, self._reopened(obj, run_id, REASON_ADOPTED, message), "adopted")
        self._event(obj, REASON_ADOPTED, f"{message}: {self.run_url(run_id)}")
        metrics.BATCHRUN_ADOPTED.labels("successor").inc()
        return None

    # --- stop and deletion ---------------------------------------------------------------------

    def _terminate(self, obj: Mapping[str, Any], run_id: str, cause: str) -> bool:
        now = self.clock()
        with self._lock:
            last = self._terminated.get(run_id)
        if last is not None and now - last < self.terminate_every:
            return False
        outcome = self.dagster.terminate_run(run_id)
        with self._lock:
            self._terminated[run_id] = now
        metrics.TERMINATIONS.labels(cause).inc()
        log.info("BatchRun %s: asked Dagster to terminate run %s (%s): %s", _name(obj), run_id, cause, outcome)
        return True

    def _request_stop(self, obj: Obj, run_id: str) -> None:
        self._terminate(obj, run_id, "batchrun-stop")
        with self._lock:
            first = run_id not in self._stop_announced
            self._stop_announced.setdefault(run_id, self.clock())
        if first:
            self._event(obj, REASON_STOP, f"stop requested: terminating Dagster run {run_id}")

    def _stop_without_run(self, obj: Obj) -> float | None:
        existing = self._existing_run(obj)
        if existing is not None:  # submitted before a restart: record it, then stop it like any run
            self._write(obj, {"dagsterRunId": existing.run_id, "dagsterRunUrl": self.run_url(existing.run_id)}, "submitted")
            if not existing.finished:
                self._request_stop(obj, existing.run_id)
            return None
        message = f"stopped on request ({vocabulary.STOP}) before its run started"
        self._write(obj, {
            "phase": STOPPED,
            "completionTime": task_status.rfc3339(self._now()),
            "conditions": self._conditions(obj, "False", REASON_STOP, message),
        }, "stopped")
        self._event(obj, REASON_STOP, message)
        return None

    def _handle_deleted(self, obj: Obj) -> float | None:
        """A BatchRun is gone: terminate its active run (its Tasks and Jobs go through owner references)."""
        run_id = run_id_of(obj)
        try:
            if run_id:
                targets = [run_id]
            else:
                targets = [r.run_id for r in self.dagster.find_runs({TAG_KIND: KIND, TAG_UID: uid_of(obj)}) if not r.finished]
            for target in targets:
                self._terminate(obj, target, "batchrun-deleted")
            return None
        except DagsterUnavailable:
            with self._lock:
                self._deleted.setdefault(key_of(obj), []).append(obj)
            return self._backoff(key_of(obj))

    # --- the end of a run ----------------------------------------------------------------------

    def _run_ended(self, obj: Obj, run_id: str) -> float | None:
        try:
            run: RunInfo | None = self.dagster.get_run(run_id)
        except RunNotFound:
            run = None
        with self._lock:
            self._runs[run_id] = run
        if run is not None and not run.finished:
            return self._maybe_reopen(obj, run_id) if is_terminal(obj) else self._progress(obj)
        successor = self._newest_successor(obj, run_id, run)
        if successor is not None:
            return self._adopt(obj, successor)
        return self._finalize(obj, run_id, run)

    def _newest_successor(self, obj: Obj, run_id: str, run: RunInfo | None) -> RunInfo | None:
        """A run of this BatchRun newer than ``run`` (a re-execution started from Dagster), or None."""
        for other in self.dagster.find_runs({TAG_KIND: KIND, TAG_UID: uid_of(obj)}, limit=20):
            if other.run_id == run_id:
                continue
            if run is None or (other.creation_time or 0) > (run.creation_time or 0):
                return other
        return None

    def _successor_hint(self, obj: Obj) -> RunInfo | None:
        run_id = run_id_of(obj)
        with self._lock:
            candidates = list(self._active.get(uid_of(obj), ()))
        return next((r for r in candidates if r.run_id != run_id), None)

    def _adopt_if_newer(self, obj: Obj, candidate: RunInfo) -> float | None:
        run_id = run_id_of(obj) or ""
        with self._lock:
            current = self._runs.get(run_id, _MISSING)
        if current is _MISSING:
            try:
                current = self.dagster.get_run(run_id)
            except RunNotFound:
                current = None
            with self._lock:
                self._runs[run_id] = current
        if current is not None and not current.finished:
            log.warning("BatchRun %s: runs %s and %s are both active; following %s", _name(obj), run_id, candidate.run_id, run_id)
            return None
        if current is not None and (candidate.creation_time or 0) <= (current.creation_time or 0):
            return None
        return self._adopt(obj, candidate)

    def _adopt(self, obj: Obj, run: RunInfo) -> float | None:
        """Follow ``run`` (a re-execution started from Dagster, or a rerun the bridge launched before a
        restart) instead of the BatchRun's current run: phase Running again; a pending rerun request is
        satisfied by it."""
        previous = run_id_of(obj)
        obj = self._clear_annotations(obj, [vocabulary.RERUN])
        parent = run.tags.get(PARENT_RUN_ID_TAG)
        origin = f"a re-execution of {parent}" if parent else "started from Dagster"
        message = f"following Dagster run {run.run_id} ({origin}) instead of {previous}"
        self._write(obj, self._reopened(obj, run.run_id, REASON_ADOPTED, message), "adopted")
        with self._lock:
            self._runs[run.run_id] = run
        self._event(obj, REASON_ADOPTED, f"{message}: {self.run_url(run.run_id)}")
        metrics.BATCHRUN_ADOPTED.labels("successor").inc()
        log.info("BatchRun %s: %s", _name(obj), message)
        return None

    def _end_task(self, task: Obj, batchrun: str, run_id: str, run: RunInfo | None) -> Obj | None:
        """Mark a Task the run never finished; its latest version (None: gone).

        A Task that was running when its run failed (the run worker died) is Failed (RunFailed): a
        rerun picks it up. One the run never started, or stopped, is Stopped (RunEnded)."""
        ns, name = key_of(task)
        how = run.status if run is not None else "missing"
        message = f"Dagster run {run_id} of BatchRun {batchrun} ended ({how}) before this Task finished"
        for _ in range(3):
            if phase_of(task) in TASK_TERMINAL:
                return task
            if how == "FAILURE" and phase_of(task) == TaskPhase.RUNNING.value:
                patch = task_status.failed(_status(task), REASON_RUN_FAILED, f"{message}; it was running (the run worker died?)",
                                           now=self._now())
            else:
                patch = task_status.stopped(_status(task), reason=REASON_RUN_ENDED, message=message, now=self._now())
            try:
                updated = self.kube.patch_task_status(ns, name, _meta(task).get("resourceVersion"), patch)
            except Conflict:
                fresh = self.kube.get_task(ns, name)
                if fresh is None:
                    return None
                task = fresh
                continue
            except Gone:
                return None
            if self.task_store is not None:
                self.task_store.put(updated)
            self.index.put(updated)
            metrics.BATCHRUN_TASKS_ENDED.inc()
            return updated
        return task

    def _finalize(self, obj: Obj, run_id: str, run: RunInfo | None) -> float | None:
        """Write the outcome of a finished (or vanished) run, from a fresh read of the BatchRun and its Tasks."""
        key = key_of(obj)
        ns, name = key
        fresh = self.kube.get_batchrun(ns, name)
        if fresh is None:
            self.store.remove(key)
            return None
        self.store.put(fresh)
        if run_id_of(fresh) != run_id or finalized(fresh):
            self.enqueue(key)  # something else moved it on: decide again
            return None
        uid = uid_of(fresh)
        tasks = [t for t in self.kube.list_batchrun_tasks(ns, name) if uid in owner_uids(t)]
        unfinished = [t for t in tasks if phase_of(t) not in TASK_TERMINAL]
        ended_tasks = 0
        if unfinished:
            # The run's ops may still be writing (a terminated step records Stopped as it exits).
            with self._lock:
                first_seen = self._ended.setdefault(run_id, self.clock())
            ended_at = (run.end_time if run is not None and run.end_time else None) or first_seen
            if ended_at + self.grace > self.clock():
                with self._lock:
                    self._not_before[run_id] = ended_at + self.grace
                return self._later(key, ended_at + self.grace)
            kept: list[Obj] = []
            for t in tasks:
                if phase_of(t) in TASK_TERMINAL:
                    kept.append(t)
                    continue
                updated = self._end_task(t, name, run_id, run)
                if updated is not None:
                    kept.append(updated)
                    ended_tasks += phase_of(updated) == TaskPhase.STOPPED.value and task_reason(updated) == REASON_RUN_ENDED
            tasks = kept
        rows = sorted(((key_of(t)[1], phase_of(t), task_reason(t)) for t in tasks),
                      key=lambda r: (index_of(r[0]) if index_of(r[0]) is not None else 1 << 30, r[0]))
        stop_asked = stop_requested(fresh)
        canceled = run is not None and run.status == CANCELED
        current = phase_of(fresh)
        status_word = run.status if run is not None else "not found"
        total = total_of(fresh)
        patch: dict[str, Any] = {}
        if total is None and not rows:  # expand_batch never completed
            counts = None
            ready = condition(fresh, task_status.READY) or {}
            if current in TERMINAL and ready.get("status") == "False" and ready.get("reason") not in _NOT_AN_OUTCOME | {None}:
                phase, reason = current, str(ready.get("reason"))
                message = f"Dagster run {run_id} ended ({status_word}): {ready.get('message') or reason}"
            elif stop_asked or canceled:
                phase, reason = STOPPED, REASON_STOP if stop_asked else REASON_RUN_CANCELED
                message = f"Dagster run {run_id} ended ({status_word}) before any Task was created"
            elif run is None:
                phase, reason = FAILED, REASON_RUN_NOT_FOUND
                message = f"Dagster has no run {run_id} (was the Dagster instance reset?)"
            else:
                phase, reason = FAILED, REASON_RUN_FAILED
                message = f"Dagster run {run_id} ended ({status_word}) before any Task was created" + self._failure_detail(run_id)
        else:
            summary = task_status.batchrun_summary(rows, total if total is not None else len(rows), paused=False, stopped=stop_asked or canceled)
            counts = summary["progress"]
            patch["progress"] = counts
            patch["failedTasks"] = summary["failedTasks"]
            if current in TERMINAL:
                phase = current  # an op's outcome stands
            elif stop_asked or canceled:
                phase = STOPPED
            elif summary["phase"] == COMPLETED:
                phase = COMPLETED
            else:
                phase = FAILED
            if phase == COMPLETED:
                reason = REASON_COMPLETED
            elif phase == STOPPED:
                reason = REASON_STOP if stop_asked else REASON_RUN_CANCELED
            elif counts["failed"] or counts["stopped"]:
                reason = REASON_TASKS_FAILED
            else:
                reason = REASON_RUN_NOT_FOUND if run is None else REASON_RUN_FAILED
            message = (
                f"Dagster run {run_id} ended ({status_word}): {counts['completed']} of {counts['total']} Tasks completed, "
                f"{counts['failed']} failed, {counts['stopped']} stopped"
            )
            if counts["pending"]:
                message += f", {counts['pending']} never created"
            if ended_tasks:
                message += f" ({ended_tasks} never finished and were marked Stopped, reason {REASON_RUN_ENDED})"
            if reason == REASON_RUN_FAILED:
                message += self._failure_detail(run_id)
        patch["phase"] = phase
        patch["conditions"] = self._conditions(fresh, "True" if phase == COMPLETED else "False", reason, message)
        if not _status(fresh).get("completionTime"):
            patch["completionTime"] = task_status.rfc3339(self._now())
        self._write(fresh, patch, "final")
        self._event(fresh, reason, message, warning=phase != COMPLETED)
        log.info("BatchRun %s: %s -> %s (%s)", _name(fresh), message, phase, reason)
        with self._lock:
            self._ended.pop(run_id, None)
            self._not_before.pop(run_id, None)
            self._last_write.pop(key, None)
            self._wake.pop(key, None)
        return None

    def _failure_detail(self, run_id: str) -> str:
        try:
            detail = self.dagster.failure_message(run_id)
        except DagsterError as e:
            log.info("no failure message for run %s: %s", run_id, e)
            return ""
        return f": {detail}" if detail else ""

    # --- rerun ---------------------------------------------------------------------------------

    def _rerun(self, obj: Obj) -> float | None:
        """``kubetask.io/rerun: failed`` on a finalized BatchRun: re-execute its run from failure."""
        value = rerun_request(obj) or ""
        run_id = run_id_of(obj) or ""
        if value.lower() != RERUN_FAILED:
            self._clear_annotations(obj, [vocabulary.RERUN])
            self._event(obj, REASON_RERUN_REFUSED, f'{vocabulary.RERUN} must be "{RERUN_FAILED}", not {value!r}; annotation removed',
                        warning=True)
            metrics.BATCHRUN_RERUNS.labels("refused").inc()
            return None
        if phase_of(obj) == COMPLETED:
            return self._nothing_to_rerun(obj, "every Task completed")
        # A re-execution launched before a restart is found by its parent tag, not launched twice.
        children = self.dagster.find_runs({PARENT_RUN_ID_TAG: run_id, TAG_UID: uid_of(obj)}, limit=5)
        if children:
            new_id = children[0].run_id
            metrics.BATCHRUN_ADOPTED.labels("rerun-found").inc()
        else:
            # The stop request is over: a re-executed expand_batch must not find it (safe before the
            # launch: the rerun annotation, still there, carries the request if the bridge dies now).
            obj = self._clear_annotations(obj, [vocabulary.STOP])
            try:
                steps = self._steps_to_rerun(obj)
                if steps:
                    new_id = self.dagster.reexecute_steps(run_id, steps)
                else:  # no Tasks yet (the run failed before expanding): Dagster's own choice
                    new_id = self.dagster.reexecute_run(run_id, strategy="FROM_FAILURE", use_parent_run_tags=True)
            except DagsterRejected as e:
                if e.kind in ("DagsterInvalidSubsetError", "DagsterInvariantViolationError"):
                    return self._nothing_to_rerun(obj, f"Dagster has nothing to re-execute in run {run_id} ({e.message.strip()})")
                metrics.BATCHRUN_SUBMISSION_ERRORS.labels("rejected").inc()
                self._clear_annotations(obj, [vocabulary.RERUN])
                self._event(obj, REASON_RERUN_REFUSED, f"Dagster refused to re-execute run {run_id}: {e}; annotation removed", warning=True)
                metrics.BATCHRUN_RERUNS.labels("refused").inc()
                return None
            except DagsterUnavailable:
                metrics.BATCHRUN_SUBMISSION_ERRORS.labels("unavailable").inc()
                raise
        # Annotation first: a crash after it leaves a newer run that the adoption picks up; a crash
        # before it finds the run by its parent tag above.
        obj = self._clear_annotations(obj, [vocabulary.RERUN, vocabulary.STOP])
        message = f"re-executing the failed and never-started Tasks of Dagster run {run_id} in run {new_id}"
        self._write(obj, self._reopened(obj, new_id, REASON_RERUN, message), "rerun")
        with self._lock:
            self._runs.pop(new_id, None)
            self._last_write.pop(key_of(obj), None)
        self._event(obj, REASON_RERUN, f"{message}: {self.run_url(new_id)}")
        metrics.BATCHRUN_RERUNS.labels("started").inc()
        log.info("BatchRun %s: %s", _name(obj), message)
        return None

    def _steps_to_rerun(self, obj: Obj) -> list[str]:
        """The mapped steps of every Task that did not complete (failed, stopped or never started),
        plus the summary; empty when the BatchRun has no Tasks to go by."""
        ns, name = key_of(obj)
        tasks = [t for t in self.kube.list_batchrun_tasks(ns, name) if uid_of(obj) in owner_uids(t)]
        total = ((_status(obj).get("progress") or {}).get("total")) or 0
        if not tasks or len(tasks) < total:
            return []
        steps = []
        for task in tasks:
            index = batches.index_of(task["metadata"]["name"])
            if index is not None and (task.get("status") or {}).get("phase") != COMPLETED:
                steps.append(f"run_batch_task[{batches.mapping_key(index)}]")
        return sorted(steps) + ["summarize_batch"] if steps else []

    def _nothing_to_rerun(self, obj: Obj, why: str) -> None:
        self._clear_annotations(obj, [vocabulary.RERUN])
        self._event(obj, REASON_NOTHING_TO_RERUN, f"nothing to rerun: {why}; annotation removed")
        metrics.BATCHRUN_RERUNS.labels("nothing").inc()
        return None

    # --- periodic work -------------------------------------------------------------------------

    def periodic(self) -> None:
        """One pass: gauges; statuses of the runs followed (one batched query) and the active runs of
        batch_job (one query, for adoptions); enqueue every BatchRun that may need work. Only enqueues."""
        objs = [o for o in self.store.snapshot() if not self.namespaces or key_of(o)[0] in self.namespaces]
        phases: dict[str, int] = {}
        for o in objs:
            phases[phase_of(o) or "None"] = phases.get(phase_of(o) or "None", 0) + 1
        for phase in [p.value for p in BatchRunPhase] + ["None"]:
            metrics.BATCHRUNS.labels(phase).set(phases.get(phase, 0))
        try:
            active = self.dagster.find_runs({TAG_KIND: KIND}, statuses=_FOLLOWED, limit=1000)
        except DagsterError as e:
            log.debug("periodic pass: no active runs from Dagster: %s", e)
        else:
            by_uid: dict[str, list[RunInfo]] = {}
            for run in active:
                if run.tags.get(TAG_UID):
                    by_uid.setdefault(run.tags[TAG_UID], []).append(run)
            with self._lock:
                self._active = by_uid
        following = [o for o in objs if run_id_of(o) and not finalized(o)]
        if following:
            ids = [run_id_of(o) for o in following]
            try:
                runs = self.dagster.get_runs(ids)  # type: ignore[arg-type]
            except DagsterError as e:
                log.debug("periodic pass: no run statuses from Dagster: %s", e)
            else:
                with self._lock:
                    for run_id in ids:
                        self._runs[run_id] = runs.get(run_id)  # type: ignore[index]
        with self._lock:
            active_uids = {uid: [r.run_id for r in runs] for uid, runs in self._active.items()}
        for o in objs:
            key = key_of(o)
            run_id = run_id_of(o)
            if being_deleted(o) or (run_id is None and not is_terminal(o)):
                self._enqueue_unless_backing_off(key)
            elif run_id is not None and not finalized(o):
                self._enqueue_unless_backing_off(key)  # progress repair, stop repeat, the run's end
            elif run_id is not None and (rerun_request(o) is not None or any(r != run_id for r in active_uids.get(uid_of(o), ()))):
                self._enqueue_unless_backing_off(key)
        with self._lock:
            deleted = list(self._deleted)
        for key in deleted:
            self.enqueue(key)
        self._prune({run_id_of(o) for o in objs if run_id_of(o)}, {key_of(o) for o in objs})

    def _enqueue_unless_backing_off(self, key: Key) -> None:
        if not self._backing_off(key):
            self.enqueue(key)

    def _prune(self, run_ids: set[str | None], keys: set[Key], keep: float = 3600.0) -> None:
        horizon = self.clock() - keep
        with self._lock:
            for table in (self._terminated, self._stop_announced, self._ended, self._not_before):
                for run_id in [r for r, t in table.items() if t < horizon]:
                    del table[run_id]
            for run_id in [r for r in self._runs if r not in run_ids]:
                del self._runs[run_id]
            for table2 in (self._last_write, self._wake):
                for key in [k for k in table2 if k not in keys]:
                    del table2[key]

    def sweep_orphans(self) -> int:
        """Terminate active runs of batch_job whose BatchRun no longer exists; the number terminated."""
        runs = self.dagster.find_runs({TAG_KIND: KIND}, statuses=_FOLLOWED, limit=1000)
        count = 0
        for run in runs:
            ns, name, uid = run.tags.get(TAG_NAMESPACE), run.tags.get(TAG_NAME), run.tags.get(TAG_UID)
            if not (ns and name and uid) or (self.namespaces and ns not in self.namespaces):
                continue
            cached = self.store.get((ns, name))
            if cached is not None and uid_of(cached) == uid:
                continue
            try:
                obj = self.kube.get_batchrun(ns, name)
            except Exception as e:
                log.info("orphan sweep: cannot read BatchRun %s/%s: %s", ns, name, e)
                continue
            if obj is not None and uid_of(obj) == uid:
                continue
            try:
                self.dagster.terminate_run(run.run_id)
            except DagsterError as e:
                log.info("orphan sweep: could not terminate run %s: %s", run.run_id, e)
                continue
            metrics.TERMINATIONS.labels("batchrun-orphan").inc()
            count += 1
            log.warning("terminated Dagster run %s: its BatchRun %s/%s (uid %s) no longer exists", run.run_id, ns, name, uid)
        return count

    def relist(self, listed_since: float) -> None:
        """Repair the BatchRun cache from a full list and the Task index from the Task cache; enqueue all."""
        items = self.kube.list_batchruns(self.namespaces)
        for obj in self.store.replace(items, listed_since, self.namespaces):
            log.info("BatchRun %s is gone (noticed by re-list)", _name(obj))
            self.observe("DELETED", obj)
        if self.task_store is not None:
            self.index.rebuild(self.task_store.snapshot)
        for obj in items:
            self.enqueue(key_of(obj))
