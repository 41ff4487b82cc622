"""What both reconcilers (Tasks, BatchRuns) share: per-key backoff, the 409 re-read loop, a
``reconcile_key`` that never raises, and the plumbing around their decisions: Events, status writes,
rate-limited termination of runs, runs of deleted objects, the orphan sweep, the re-list and pruning.

A reconciler passes everything it shares to ``ReconcileLoop.__init__`` and implements
``_reconcile_once(obj)`` (decide and act on one object) and ``observe(event_type, obj)``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from kubetask import objects, vocabulary
from kubetask.domain import runs as contract
from kubetask.objects import Key, Obj

from . import metrics
from .cache import ObjectStore
from .dagster.client import ACTIVE_STATUSES, DagsterError, DagsterUnavailable, RunInfo, RunNotFound
from .kube import Conflict, Gone, KubeApi
from .tenancy import TenantGate

log = logging.getLogger(__name__)

FOLLOWED = [s for s in ACTIVE_STATUSES if s != "CANCELING"]
"""Run statuses the orphan sweep and the adoption queries look for."""


def _default_enqueue(key: Key, delay: float) -> None:
    return None


class ReconcileLoop:
    """The skeleton of a level-based reconciler of one kind of object."""

    MAX_CONFLICTS = 5
    BACKOFF_INITIAL = 1.0
    BACKOFF_CAP = 30.0

    CAUSES: Mapping[str, str] = {"stop": "stop", "deleted": "deleted", "orphan": "orphan"}
    """The termination metric's label per cause (``stop``, ``deleted``, ``orphan``)."""
    SWEEP_TRUSTS_CACHE = False
    """Whether the orphan sweep takes a cached object of the run's uid as proof that it exists (no GET)."""

    def __init__(
        self,
        kind: str,
        plural: str,
        kube: KubeApi,
        dagster: Any,
        store: ObjectStore,
        namespaces: Sequence[str],
        enqueue: Callable[[Key, float], None] | None,
        clock: Callable[[], float],
        terminate_every: float,
        tenancy: TenantGate | None = None,
    ):
        """A reconciler of ``kind`` (custom objects ``plural``), its cache ``store``, the watched
        ``namespaces`` (all when empty), ``enqueue(key, delay)`` of its work queue, ``clock`` (epoch
        seconds), the least seconds between two terminate requests for one run, and the ``tenancy``
        gate asked before a first submission (None: every namespace is enabled)."""
        self.kind = kind
        self.plural = plural
        self.kube = kube
        self.dagster = dagster
        self.store = store
        self.namespaces = tuple(namespaces)
        self._enqueue = enqueue or _default_enqueue
        self.clock = clock
        self.terminate_every = terminate_every
        self.tenancy = tenancy
        self._lock = threading.Lock()
        self._failures: dict[Key, tuple[int, float]] = {}  # key -> (failures, when the next retry is due)
        self._deleted: dict[Key, list[Obj]] = {}  # key -> deleted objects whose runs are still to terminate
        self._ended: dict[str, float] = {}  # run id -> when the bridge first saw it finished (no endTime)
        self._terminated: dict[str, float] = {}  # run id -> when the bridge last asked to terminate it
        self._stop_announced: dict[str, float] = {}  # run id/uid -> when StopRequested was recorded

    def _not_enabled(self, obj: Obj) -> str | None:
        """Why ``obj``'s namespace cannot run it (the run worker has no rights there), or None."""
        return None if self.tenancy is None else self.tenancy.refusal(objects.key_of(obj)[0], self.kind)

    # --- backoff and the loop ------------------------------------------------------------------

    def _backoff(self, key: Key) -> float:
        """Seconds until the next try of ``key``: doubles per failed scheduled try, capped. A failure of
        an early try (a watch event or a periodic pass came first) does not grow the delay."""
        now = self.clock()
        with self._lock:
            n, due = self._failures.get(key, (0, 0.0))
            if now < due:
                return due - now
            n += 1
            delay = min(self.BACKOFF_CAP, self.BACKOFF_INITIAL * 2 ** (n - 1))
            self._failures[key] = (n, now + delay)
        return delay

    def _succeeded(self, key: Key) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def _backing_off(self, key: Key) -> bool:
        with self._lock:
            return self._failures.get(key, (0, 0.0))[1] > self.clock()

    def reconcile_key(self, key: Key) -> float | None:
        """Reconcile one object (and the runs of its deleted predecessors); seconds until the next
        look, or None. Never raises: errors are logged with the object's name and retried with backoff."""
        ns, name = key
        try:
            with self._lock:
                deleted = self._deleted.pop(key, [])
            delays = [self._handle_deleted(obj) for obj in deleted]
            delays.append(self.reconcile(key))
            pending = [d for d in delays if d is not None]
            if not pending:
                self._succeeded(key)
            return min(pending) if pending else None
        except DagsterUnavailable as e:
            delay = self._backoff(key)
            log.info("%s %s/%s: Dagster unavailable (%s); next try in %.0f s", self.kind, ns, name, e, delay)
            return delay
        except Exception:
            metrics.RECONCILE_ERRORS.inc()
            delay = self._backoff(key)
            log.exception("%s %s/%s: reconcile failed; next try in %.0f s", self.kind, ns, name, delay)
            return delay

    def reconcile(self, key: Key) -> float | None:
        """Decide and act on the object at ``key``; 409s are answered by re-reading and deciding again."""
        obj = self.store.get(key)
        for _ in range(self.MAX_CONFLICTS):
            if obj is None:
                return None
            try:
                return self._reconcile_once(obj)
            except Conflict:
                metrics.CONFLICTS.inc()
                log.debug("%s %s/%s changed meanwhile; re-reading", self.kind, *key)
                obj = self._fetch(key)
                if obj is None:
                    self.store.remove(key)
                else:
                    self.store.put(obj)
            except Gone:
                self.store.remove(key)
                return None
        return self._backoff(key)

    def _reconcile_once(self, obj: Obj) -> float | None:
        raise NotImplementedError

    def observe(self, event_type: str | None, obj: Obj) -> None:
        """A watch event (``None`` type: seen in a listing); non-blocking: updates the cache and enqueues."""
        raise NotImplementedError

    def periodic(self) -> None:
        """One periodic pass: enqueue every key that may need work (only enqueues)."""
        raise NotImplementedError

    # --- plumbing ------------------------------------------------------------------------------

    def enqueue(self, key: Key, delay: float = 0.0) -> None:
        self._enqueue(key, delay)

    def _enqueue_unless_backing_off(self, key: Key) -> None:
        if not self._backing_off(key):
            self.enqueue(key)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def _fetch(self, key: Key) -> Obj | None:
        return self.kube.get(self.plural, *key)

    def _event(self, obj: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        self.kube.emit_event(obj, reason, message, warning=warning)

    def _write_status(self, obj: Obj, patch: Mapping[str, Any]) -> Obj:
        """Merge-patch the status of ``obj`` (precondition: the version it was read at); cache the answer."""
        ns, name = objects.key_of(obj)
        updated = self.kube.patch_status(self.plural, ns, name, objects.meta(obj).get("resourceVersion"), patch)
        self.store.put(updated)
        return updated

    def _forget(self, key: Key, obj: Obj) -> Obj:
        """Drop a deleted object from the cache; the newer of the cached and the deleted version."""
        old = self.store.remove(key, objects.uid_of(obj))
        newer = old is not None and (objects.resource_version_of(old) or 0) > (objects.resource_version_of(obj) or 0)
        return old if newer and old is not None else obj

    def _count_phases(self, objs: Iterable[Mapping[str, Any]], phases: Iterable[str], gauge: Any) -> dict[str, int]:
        """Set ``gauge`` per phase (``None``: no phase yet) from ``objs``; the counts."""
        counts: dict[str, int] = {}
        for o in objs:
            phase = objects.phase_of(o) or "None"
            counts[phase] = counts.get(phase, 0) + 1
        for phase in [*phases, "None"]:
            gauge.labels(phase).set(counts.get(phase, 0))
        return counts

    # --- runs ----------------------------------------------------------------------------------

    def _existing_run(self, obj: Obj) -> RunInfo | None:
        """A run already made for this object's generation (a restart between submit and status write)."""
        found = self.dagster.find_runs(contract.identity_tags(obj, self.kind))
        active = [r for r in found if not r.finished]
        return (active or found or [None])[0]

    def _terminate(self, obj: Mapping[str, Any], run_id: str, cause: str) -> bool:
        """Ask Dagster to terminate ``run_id`` (at most once per ``terminate_every`` seconds)."""
        now = self.clock()
        with self._lock:
            last = self._terminated.get(run_id)
        if last is not None and now - last < self.terminate_every:
            return False
        if not self._owns_run(obj, run_id):
            with self._lock:
                self._terminated[run_id] = now
            return False
        outcome = self.dagster.terminate_run(run_id)
        with self._lock:
            self._terminated[run_id] = now
        metrics.TERMINATIONS.labels(self.CAUSES[cause]).inc()
        log.info(
            "%s %s: asked Dagster to terminate run %s (%s): %s",
            self.kind,
            objects.name_of(obj),
            run_id,
            self.CAUSES[cause],
            outcome,
        )
        return True

    def _owns_run(self, obj: Mapping[str, Any], run_id: str) -> bool:
        """Whether ``run_id`` is this object's run (its tags say so); says why not, on the object, when not."""
        try:
            run = self.dagster.get_run(run_id)
        except RunNotFound:
            return False
        if contract.is_run_of(run.tags, obj):
            return True
        message = f"refused to act on Dagster run {run_id}: its tags name another object, not this {self.kind}"
        log.warning("%s %s: %s", self.kind, objects.name_of(obj), message)
        self._event(obj, vocabulary.RUN_NOT_OWNED, message, warning=True)
        return False

    def _request_stop(self, obj: Obj, run_id: str) -> None:
        """Terminate the run on ``kubetask.io/stop`` (rate-limited); record StopRequested once per run."""
        self._terminate(obj, run_id, "stop")
        self._announce_stop(obj, run_id, f"stop requested: terminating Dagster run {run_id}")

    def _announce_stop(self, obj: Obj, run_id: str, message: str) -> None:
        """Record StopRequested once per object and run."""
        key = f"{run_id}/{objects.uid_of(obj)}"
        with self._lock:
            first = key not in self._stop_announced
            self._stop_announced.setdefault(key, self.clock())
        if first:
            self._event(obj, vocabulary.STOP_REQUESTED, message)

    def _handle_deleted(self, obj: Obj) -> float | None:
        """The object is gone: terminate its active run (its Tasks and Jobs go through owner references)."""
        run_id = objects.run_id_of(obj)
        try:
            if run_id:
                targets = [run_id]
            else:
                tags = {vocabulary.TAG_KIND: self.kind, vocabulary.TAG_UID: objects.uid_of(obj)}
                targets = [r.run_id for r in self.dagster.find_runs(tags) if not r.finished]
            for target in targets:
                self._terminate(obj, target, "deleted")
            return None
        except DagsterUnavailable:
            with self._lock:
                self._deleted.setdefault(objects.key_of(obj), []).append(obj)
            return self._backoff(objects.key_of(obj))

    def _exists(self, namespace: str, name: str, uid: str) -> bool | None:
        """Whether the object of ``uid`` exists (None: cannot tell)."""
        if self.SWEEP_TRUSTS_CACHE:
            cached = self.store.get((namespace, name))
            if cached is not None and objects.uid_of(cached) == uid:
                return True
        try:
            obj = self.kube.get(self.plural, namespace, name)
        except Exception as e:  # noqa: BLE001 - the sweep skips what it cannot check and goes on
            log.info("orphan sweep: cannot read %s %s/%s: %s", self.kind, namespace, name, e)
            return None
        return obj is not None and objects.uid_of(obj) == uid

    def sweep_orphans(self) -> int:
        """Terminate active runs of this kind whose object no longer exists (deleted while the bridge
        was away); the number terminated."""
        found = self.dagster.find_runs({vocabulary.TAG_KIND: self.kind}, statuses=FOLLOWED, limit=1000)
        count = 0
        for run in found:
            tags = run.tags
            ns, name, uid = (
                tags.get(vocabulary.TAG_NAMESPACE),
                tags.get(vocabulary.TAG_NAME),
                tags.get(vocabulary.TAG_UID),
            )
            if not (ns and name and uid) or (self.namespaces and ns not in self.namespaces):
                continue
            if self._exists(ns, name, uid) is not False:
                continue
            try:
                self.dagster.terminate_run(run.run_id)
            except DagsterError as e:
                log.info("orphan sweep: could not terminate run %s: %s", run.run_id, e)
                continue
            metrics.TERMINATIONS.labels(self.CAUSES["orphan"]).inc()
            count += 1
            log.warning(
                "terminated Dagster run %s: its %s %s/%s (uid %s) no longer exists",
                run.run_id,
                self.kind,
                ns,
                name,
                uid,
            )
        return count

    # --- re-list and pruning -------------------------------------------------------------------

    def relist(self, listed_since: float) -> list[Obj]:
        """Repair the cache from a full list (taken after ``listed_since`` on the store's clock): objects
        it lacks are handled as deleted. The listed objects."""
        items = self.kube.list(self.plural, self.namespaces)
        for obj in self.store.replace(items, listed_since, self.namespaces):
            log.info("%s %s is gone (noticed by re-list)", self.kind, objects.name_of(obj))
            self.observe("DELETED", obj)
        return items

    def _prune(self, *tables: dict[str, float], keep: float = 3600.0) -> None:
        """Forget runs older than ``keep`` in the shared tables and ``tables``."""
        horizon = self.clock() - keep
        with self._lock:
            for table in (self._terminated, self._stop_announced, self._ended, *tables):
                for run_id in [r for r, t in table.items() if t < horizon]:
                    del table[run_id]
