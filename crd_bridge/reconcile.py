"""The skeleton both reconcilers share: per-key backoff, the 409 re-read loop, and a
``reconcile_key`` that never raises.

A subclass sets ``KIND`` and provides ``store``, ``clock``, ``_lock``, ``_failures``, ``_deleted``,
``_fetch(key)``, ``_handle_deleted(obj)`` and ``_reconcile_once(obj)``.
"""

from __future__ import annotations

import logging

from . import metrics
from .dagster_client import DagsterUnavailable

log = logging.getLogger(__name__)


class Conflict(Exception):
    """The object changed since it was read (HTTP 409): re-read and decide again."""


class Gone(Exception):
    """The object no longer exists (HTTP 404)."""


class ReconcileLoop:
    MAX_CONFLICTS = 5
    BACKOFF_INITIAL = 1.0
    BACKOFF_CAP = 30.0
    KIND = "object"

    def _backoff(self, key) -> float:
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

    def _succeeded(self, key) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def _backing_off(self, key) -> bool:
        with self._lock:
            return self._failures.get(key, (0, 0.0))[1] > self.clock()

    def reconcile_key(self, key) -> float | None:
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
            log.info("%s %s/%s: Dagster unavailable (%s); next try in %.0f s", self.KIND, ns, name, e, delay)
            return delay
        except Exception:
            metrics.RECONCILE_ERRORS.inc()
            delay = self._backoff(key)
            log.exception("%s %s/%s: reconcile failed; next try in %.0f s", self.KIND, ns, name, delay)
            return delay

    def reconcile(self, key) -> float | None:
        """Decide and act on the object at ``key``; 409s are answered by re-reading and deciding again."""
        obj = self.store.get(key)
        for _ in range(self.MAX_CONFLICTS):
            if obj is None:
                return None
            try:
                return self._reconcile_once(obj)
            except Conflict:
                metrics.CONFLICTS.inc()
                log.debug("%s %s/%s changed meanwhile; re-reading", self.KIND, *key)
                obj = self._fetch(key)
                if obj is None:
                    self.store.remove(key)
                else:
                    self.store.put(obj)
            except Gone:
                self.store.remove(key)
                return None
        return self._backoff(key)
