"""The bridge's in-memory state: ``ObjectStore`` (objects by key, with indexes), ``WorkQueue`` and
``WorkspaceLimits``.

An ``ObjectStore`` is fed by kopf's watch events, the bridge's own status writes and periodic
re-lists; it keeps the newest ``resourceVersion`` of an object, and answers the questions of the
decisions without API calls through its indexers (client-go's ``Indexer``): the Tasks of a
WorkspaceConfig, the Tasks of a BatchRun. Subscribers hear of every change, after it is made.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

from kubetask import objects
from kubetask.objects import Key, Obj

from .kube import WORKSPACE_CONFIGS, KubeApi

DECIDED_SPEC_FIELDS = ("workspaceConfigRef", "batchRef", "parallelism", "timeout")
"""The spec fields a decision of the bridge reads; a BatchRun's inline ``batchSpec`` keeps only ``parallelism``."""
UNREAD_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def decided_fields(obj: Mapping[str, Any]) -> Obj:
    """``obj`` with only what the bridge decides on: metadata (without managedFields and kubectl's copy of
    the whole object), status (of an agent's result only its usage and pull requests), and the spec
    fields of ``DECIDED_SPEC_FIELDS``. Contexts, however large, are the run's business: the cache does
    not grow with them."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    annotations = meta.get("annotations")
    if annotations and any(a in annotations for a in UNREAD_ANNOTATIONS):
        meta["annotations"] = {k: v for k, v in annotations.items() if k not in UNREAD_ANNOTATIONS}
    spec = obj.get("spec") or {}
    kept = {k: spec[k] for k in DECIDED_SPEC_FIELDS if k in spec}
    batch_spec = spec.get("batchSpec")
    if isinstance(batch_spec, Mapping):
        kept["batchSpec"] = {k: v for k, v in batch_spec.items() if k == "parallelism"}
    rest = {k: v for k, v in obj.items() if k not in ("metadata", "spec", "status")}
    status = obj.get("status")
    if isinstance(status, Mapping) and isinstance(status.get("result"), Mapping):
        # of an agent's result (up to 4 KiB) the bridge sums the usage and counts the pull requests
        result = {k: v for k, v in status["result"].items() if k in ("usage", "pullRequests")}
        status = {**status, "result": result}
    if status is not None:
        rest["status"] = status
    return {**rest, "metadata": meta, "spec": kept}


Indexer = Callable[[Mapping[str, Any]], Iterable[Hashable]]
"""The index values of an object (none: not in that index)."""
Listener = Callable[[Obj | None, Obj | None], None]
"""Called with (previous, current) after a change; current None: removed."""


class ObjectStore:
    """Thread-safe cache of objects by (namespace, name), with named indexes; ``trim`` (e.g.
    ``decided_fields``) chooses what of each object is kept."""

    def __init__(
        self,
        indexers: Mapping[str, Indexer] | None = None,
        clock: Callable[[], float] = time.monotonic,
        trim: Callable[[Obj], Obj] | None = None,
    ):
        self._clock = clock
        self._trim = trim
        self._lock = threading.RLock()
        self._indexers = dict(indexers or {})
        self._objs: dict[Key, Obj] = {}
        self._touched: dict[Key, float] = {}
        self._indexes: dict[str, dict[Hashable, set[Key]]] = {name: {} for name in self._indexers}
        self._listeners: list[Listener] = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._objs)

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(previous, current)`` after every change (outside the store's lock)."""
        self._listeners.append(listener)

    def _notify(self, changes: Iterable[tuple[Obj | None, Obj | None]]) -> None:
        for old, new in changes:
            for listener in self._listeners:
                listener(old, new)

    def get(self, key: Key) -> Obj | None:
        with self._lock:
            return self._objs.get(key)

    def snapshot(self) -> list[Obj]:
        with self._lock:
            return list(self._objs.values())

    def by_index(self, index: str, value: Hashable) -> list[Obj]:
        """The objects whose ``index`` values include ``value``."""
        with self._lock:
            return [self._objs[k] for k in self._indexes[index].get(value, ())]

    def _link(self, key: Key, obj: Obj | None, add: bool) -> None:
        if obj is None:
            return
        for name, indexer in self._indexers.items():
            index = self._indexes[name]
            for value in indexer(obj):
                if add:
                    index.setdefault(value, set()).add(key)
                    continue
                members = index.get(value)
                if members is not None:
                    members.discard(key)
                    if not members:
                        del index[value]

    def _put(self, obj: Obj) -> tuple[Obj | None, Obj | None]:
        """(the previous version, what was stored: None when the cache held a newer version)."""
        if self._trim is not None:
            obj = self._trim(obj)
        key = objects.key_of(obj)
        with self._lock:
            old = self._objs.get(key)
            if old is not None and objects.uid_of(old) == objects.uid_of(obj):
                new_rv, old_rv = objects.resource_version_of(obj), objects.resource_version_of(old)
                if new_rv is not None and old_rv is not None and new_rv < old_rv:
                    return old, None
            self._link(key, old, add=False)
            self._objs[key] = obj
            self._touched[key] = self._clock()
            self._link(key, obj, add=True)
            return old, obj

    def put(self, obj: Obj) -> Obj | None:
        """Store ``obj`` unless the cache holds a newer version of the same object; the previous version."""
        old, stored = self._put(obj)
        if stored is not None:
            self._notify([(old, stored)])
        return old

    def _remove(self, key: Key, uid: str | None) -> Obj | None:
        with self._lock:
            old = self._objs.get(key)
            if old is None or (uid is not None and objects.uid_of(old) != uid):
                return None
            self._link(key, old, add=False)
            del self._objs[key]
            self._touched.pop(key, None)
            return old

    def remove(self, key: Key, uid: str | None = None) -> Obj | None:
        """Forget the object at ``key`` (only if its uid is ``uid``, when given); the forgotten object."""
        old = self._remove(key, uid)
        if old is not None:
            self._notify([(old, None)])
        return old

    def replace(self, items: Iterable[Obj], listed_since: float, namespaces: Sequence[str] = ()) -> list[Obj]:
        """Merge a full list taken after ``listed_since``; drop cached objects it lacks that no event
        touched since (in ``namespaces``, when given). Returns the dropped objects."""
        listed = {objects.key_of(o): o for o in items}
        for obj in listed.values():
            self.put(obj)
        dropped: list[Obj] = []
        with self._lock:
            for key in list(self._objs):
                if namespaces and key[0] not in namespaces:
                    continue
                if key not in listed and self._touched.get(key, 0.0) < listed_since:
                    old = self._remove(key, None)
                    if old is not None:
                        dropped.append(old)
        self._notify((old, None) for old in dropped)
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
        value = objects.spec(obj).get("maxConcurrentTasks")
        return int(value) if value is not None else None

    def put(self, obj: Mapping[str, Any]) -> tuple[bool, int | None]:
        """Record a WorkspaceConfig; (changed, limit)."""
        key = objects.key_of(obj)
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
        obj = self._kube.get(WORKSPACE_CONFIGS, namespace, name)
        if obj is None:
            with self._lock:
                self._missing[(namespace, name)] = self._clock() + self._miss_ttl
            return None
        return self.put(obj)[1]

    def known(self) -> list[Key]:
        """The WorkspaceConfigs that exist, as last watched or read."""
        with self._lock:
            return list(self._known)

    def replace(self, items: Iterable[Obj]) -> list[Key]:
        """Set the known WorkspaceConfigs from a full list; the keys whose limit changed."""
        changed: list[Key] = []
        seen: set[Key] = set()
        for obj in items:
            seen.add(objects.key_of(obj))
            if self.put(obj)[0]:
                changed.append(objects.key_of(obj))
        with self._lock:
            for key in [k for k in self._known if k not in seen]:
                del self._known[key]
                changed.append(key)
        return changed


class WorkQueue:
    """De-duplicating queue of keys with delayed adds; a key is handed to one worker at a time (like
    client-go's workqueue)."""

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
                left = None if deadline is None else deadline - self._clock()
                if left is not None and left <= 0:
                    return None
                waits = [w for w in (next_due, left) if w is not None]
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
