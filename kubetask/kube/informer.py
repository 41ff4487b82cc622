"""A shared list+watch cache of one kind of object, like client-go's informer, for waiting steps.

Every step of a run worker that waits for its pod reads this cache instead of opening its own
watch: one LIST and one long WATCH per (kind, namespace, label selector) per process, however many
Tasks wait. Waiters block on a condition variable that every change wakes, with a short timeout so
they can notice a deadline or an interrupt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)

WATCH_SECONDS = 300
MAX_BACKOFF_SECONDS = 10.0


class Informer:
    """Objects returned by ``list_fn(namespace, label_selector=...)``, kept current by a watch thread."""

    def __init__(
        self,
        list_fn: Callable[..., Any],
        namespace: str,
        label_selector: str,
        kind: str,
        index_label: str | None = None,
    ):
        self.namespace = namespace
        self.label_selector = label_selector
        self.kind = kind
        self._list_fn = list_fn
        self._objects: dict[str, Any] = {}
        self._index_label = index_label
        self._index: dict[str, dict[str, Any]] = {}  # index label value -> name -> object
        self._changed = threading.Condition()
        self._version = 0
        self._synced = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"informer {kind} {namespace} {label_selector}", daemon=True
        )
        self._thread.start()

    # --- reading -------------------------------------------------------------------------------

    def wait_synced(self, timeout: float) -> bool:
        """True once the first LIST has filled the cache."""
        return self._synced.wait(timeout)

    def get(self, name: str) -> Any | None:
        with self._changed:
            return self._objects.get(name)

    def by_index(self, value: str) -> list[Any]:
        """The objects whose ``index_label`` has this value (e.g. the pods of one Job)."""
        with self._changed:
            return list(self._index.get(value, {}).values())

    @property
    def version(self) -> int:
        """Grows by one per change seen; pass it to ``wait_for_change``."""
        with self._changed:
            return self._version

    def wait_for_change(self, seen_version: int, timeout: float) -> int:
        """Block until the cache changed after ``seen_version`` or ``timeout`` passed; the new version."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen_version, timeout)
            return self._version

    def stop(self) -> None:
        self._stopped.set()

    # --- the watch thread ------------------------------------------------------------------------

    def _index_value(self, obj: Any) -> str | None:
        return (obj.metadata.labels or {}).get(self._index_label) if self._index_label else None

    def _replace_all(self, items: list[Any]) -> None:
        with self._changed:
            self._objects, self._index = {}, {}
            for obj in items:
                self._put(obj)
            self._version += 1
            self._changed.notify_all()

    def _put(self, obj: Any) -> None:
        self._remove(obj.metadata.name)
        self._objects[obj.metadata.name] = obj
        value = self._index_value(obj)
        if value is not None:
            self._index.setdefault(value, {})[obj.metadata.name] = obj

    def _remove(self, name: str) -> None:
        old = self._objects.pop(name, None)
        value = self._index_value(old) if old is not None else None
        if value is not None:
            bucket = self._index.get(value, {})
            bucket.pop(name, None)
            if not bucket:
                self._index.pop(value, None)

    def _apply(self, event_type: str, obj: Any) -> None:
        with self._changed:
            if event_type == "DELETED":
                self._remove(obj.metadata.name)
            else:
                self._put(obj)
            self._version += 1
            self._changed.notify_all()

    def _run(self) -> None:
        backoff = 0.5
        resource_version = None
        while not self._stopped.is_set():
            try:
                if resource_version is None:
                    listing = self._list_fn(self.namespace, label_selector=self.label_selector)
                    self._replace_all(listing.items)
                    self._synced.set()
                    resource_version = listing.metadata.resource_version
                watch = kubernetes.watch.Watch()
                for event in watch.stream(
                    self._list_fn,
                    self.namespace,
                    label_selector=self.label_selector,
                    resource_version=resource_version,
                    timeout_seconds=WATCH_SECONDS,
                ):
                    if self._stopped.is_set():
                        watch.stop()
                        return
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self._apply(event["type"], event["object"])
                    backoff = 0.5
                # a quiet end of the watch: resume where it left off
                resource_version = watch.resource_version or resource_version
            except ApiException as e:
                if e.status == 410:  # too old a resourceVersion: list again
                    resource_version = None
                    continue
                log.warning(
                    "watch of %s in %s failed (%s %s); retrying in %.1f s",
                    self.kind,
                    self.namespace,
                    e.status,
                    e.reason,
                    backoff,
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                resource_version = None
            except Exception as e:  # noqa: BLE001 - the API server restarting, a dropped connection
                log.warning("watch of %s in %s broke (%s); retrying in %.1f s", self.kind, self.namespace, e, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                resource_version = None


class InformerRegistry:
    """One Informer per (kind, namespace, selector), created on first use and shared by all threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._informers: dict[tuple[str, str, str], Informer] = {}

    def get(
        self,
        kind: str,
        list_fn: Callable[..., Any],
        namespace: str,
        label_selector: str,
        index_label: str | None = None,
    ) -> Informer:
        key = (kind, namespace, label_selector)
        with self._lock:
            informer = self._informers.get(key)
            if informer is None:
                informer = self._informers[key] = Informer(list_fn, namespace, label_selector, kind, index_label)
            return informer
