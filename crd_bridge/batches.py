"""Batches: keep Dagster's Batch assets and schedules in step with the Batch CRs.

The code location builds one asset per Batch and one schedule per scheduled Batch when it loads
(``kubetask_dagster.catalog``). This part of the bridge:

- watches Batches (``kopf.on.event``). When the set of (namespace, name, uid, generation) changes,
  it waits for a quiet second (at most ``max_delay`` during a burst) and reloads the code location
  through the webserver's GraphQL ``reloadRepositoryLocation``. With ``dagster code-server start``
  that one reload reaches the webserver and the daemon within about a second;
- after a reload, applies ``spec.schedule.suspend`` to the schedule's on/off state of every Batch
  that is new or changed since it last did so (and of every Batch once at start-up): GraphQL
  ``startSchedule`` when it should run, ``stopRunningSchedule`` when suspended. Schedules are
  declared STOPPED in code, so a new schedule ticks at its first cron boundary. A toggle flipped in
  Dagster's UI holds until the Batch changes or the bridge restarts; ``suspend`` is the durable switch;
- watches BatchRuns owned by a Batch and, when one changes, refreshes the Batch's ``status.active``
  and ``status.lastSuccessfulTime`` and deletes finished BatchRuns beyond the schedule's history
  limits, as the CronJob controller does when a Job finishes (the tick does the same when it fires).

All API and GraphQL calls happen on one thread; the kopf handlers only record what changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubetask import objects, vocabulary
from kubetask.api import GROUP
from kubetask.domain import catalog
from kubetask.domain import scheduling as schedules
from kubetask.domain.catalog import BatchEntry
from kubetask.objects import Key

from . import metrics
from .dagster import queries
from .dagster.client import DagsterError
from .kube import BATCHES, BATCHRUNS, KubeApi

log = logging.getLogger(__name__)

Version = tuple[str, int]  # uid, generation


def _key(obj: Mapping[str, Any]) -> Key | None:
    meta = objects.meta(obj)
    if not meta.get("namespace") or not meta.get("name"):
        return None
    return meta["namespace"], meta["name"]


def owner_batch(obj: Mapping[str, Any]) -> Key | None:
    """The Batch owning a BatchRun, if any."""
    meta = objects.meta(obj)
    for ref in meta.get("ownerReferences") or []:
        if (
            ref.get("kind") == vocabulary.KIND_BATCH
            and ref.get("apiVersion", "").startswith(GROUP + "/")
            and meta.get("namespace")
        ):
            return meta["namespace"], ref["name"]
    return None


def desired_toggle(entry: BatchEntry, current: str | None) -> str | None:
    """``start``, ``stop`` or None (already right) for a schedule whose state is ``current``."""
    if entry.schedule is None:
        return None
    if entry.schedule.suspend:
        return "stop" if current == "RUNNING" else None
    return None if current == "RUNNING" else "start"


class BatchSync:
    """Reload-on-change, schedule toggles and Batch status; ``step`` does the work (one thread)."""

    def __init__(
        self,
        dagster: Any,
        kube: KubeApi,
        *,
        debounce: float = 1.0,
        max_delay: float = 10.0,
        startup_grace: float = 2.0,
        status_delay: float = 0.5,
        sync_attempts: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``dagster``: the bridge's ``DagsterClient``; ``kube``: its ``KubeApi``."""
        self.dagster = dagster
        self.kube = kube
        self.debounce = debounce
        self.max_delay = max_delay
        self.status_delay = status_delay
        self.sync_attempts = sync_attempts
        self._clock = clock
        self._cond = threading.Condition()
        self._entries: dict[Key, BatchEntry] = {}
        now = clock()
        self._last_event = now
        self._dirty_since: float | None = now  # one reload at start-up: Batches may have changed while away
        self._not_before = now + startup_grace
        self._reload_failures = 0
        self._loaded: frozenset[tuple[Key, str, int]] | None = None
        self._synced: dict[Key, Version] = {}
        self._sync_tries: dict[Key, int] = {}
        self._sync_not_before = 0.0
        self._status_due: dict[Key, float] = {}
        self._status_failures: dict[Key, int] = {}
        self._reload_supported = True

    # --- kopf side (cheap, no I/O) -------------------------------------------------------------

    def observe(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        key = _key(obj)
        if key is None:
            return
        with self._cond:
            before = self._signature()
            if event_type == "DELETED" or objects.being_deleted(obj):
                self._entries.pop(key, None)
                self._synced.pop(key, None)
            else:
                entry = catalog.entry_from_batch(obj)
                if entry is not None:
                    self._entries[key] = entry
            if self._signature() != before:
                now = self._clock()
                self._last_event = now
                if self._dirty_since is None:
                    self._dirty_since = now
                self._cond.notify_all()

    def observe_batchrun(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        key = owner_batch(obj)
        if key is None:
            return
        with self._cond:
            self._status_due.setdefault(key, self._clock() + self.status_delay)
            self._cond.notify_all()

    # --- state -------------------------------------------------------------------------------

    def _signature(self) -> frozenset[tuple[Key, str, int]]:
        return frozenset((k, e.uid, e.generation) for k, e in self._entries.items())

    def _pending_toggles(self) -> dict[Key, BatchEntry]:
        """Scheduled Batches whose current version is loaded in Dagster but whose toggle is not applied yet."""
        with self._cond:
            loaded = self._loaded or frozenset()
            return {
                k: e
                for k, e in self._entries.items()
                if e.schedule is not None
                and self._synced.get(k) != (e.uid, e.generation)
                and (k, e.uid, e.generation) in loaded
            }

    # --- the worker --------------------------------------------------------------------------

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                wait = self.step()
            except Exception:
                log.exception("Batch sync step failed")
                wait = 5.0
            with self._cond:
                self._cond.wait(timeout=max(0.05, min(wait, 5.0)))

    def step(self) -> float:
        """Do what is due; the seconds until something may be due again."""
        now = self._clock()
        waits = [30.0]
        with self._cond:
            signature = self._signature()
            dirty = signature != self._loaded
            quiet_at = self._last_event + self.debounce
            burst_cap = (self._dirty_since or now) + self.max_delay
            due_at = max(min(quiet_at, burst_cap), self._not_before)
        if dirty and now >= due_at:
            self._reload(signature)
        elif dirty:
            waits.append(due_at - now)
        if self._pending_toggles():
            if now >= self._sync_not_before:
                self._sync_toggles()
            waits.append(max(0.05, self._sync_not_before - self._clock()))
        waits.append(self._refresh_statuses())
        return max(0.05, min(waits))

    # --- reload ------------------------------------------------------------------------------

    def _reload(self, signature: frozenset[tuple[Key, str, int]]) -> None:
        started = time.monotonic()
        try:
            result = self.dagster.execute(queries.RELOAD, {"location": self.dagster.location}, mutation=True)
            result = result["reloadRepositoryLocation"]
        except DagsterError as e:
            self._reload_failed(f"{type(e).__name__}: {e}")
            return
        kind = result.get("__typename")
        if kind == "WorkspaceLocationEntry":
            error = result.get("locationOrLoadError") or {}
            if error.get("__typename") == "PythonError":
                self._reload_failed(f"the code location failed to load: {(error.get('message') or '')[:500]}")
                return
        elif kind == "ReloadNotSupported":
            if self._reload_supported:
                log.error(
                    "Dagster cannot reload code location %s (serve it with `dagster code-server start`); "
                    "Batch assets and schedules follow the Batches only when that server restarts",
                    self.dagster.location,
                )
            self._reload_supported = False
        else:
            self._reload_failed(f"{kind}: {result.get('message')}")
            return
        metrics.RELOADS.labels("ok").inc()
        with self._cond:
            self._loaded = signature
            self._dirty_since = None if self._signature() == signature else self._clock()
            self._reload_failures = 0
            self._sync_not_before = 0.0
        log.info(
            "reloaded code location %s for %d Batches in %.2f s",
            self.dagster.location,
            len(signature),
            time.monotonic() - started,
        )

    def _reload_failed(self, why: str) -> None:
        metrics.RELOADS.labels("error").inc()
        with self._cond:
            self._reload_failures += 1
            delay = min(30.0, 2.0 ** min(self._reload_failures - 1, 5))
            self._not_before = self._clock() + delay
        log.warning("code location reload failed (%s); retrying in %.0f s", why, delay)

    # --- schedule toggles --------------------------------------------------------------------

    def _sync_toggles(self) -> None:
        pending = self._pending_toggles()
        selector = {"repositoryLocationName": self.dagster.location, "repositoryName": self.dagster.repository}
        try:
            result = self.dagster.execute(queries.SCHEDULES, {"selector": selector})["schedulesOrError"]
            if result.get("__typename") != "Schedules":
                raise DagsterError(f"schedulesOrError answered {result.get('__typename')}: {result.get('message')}")
            listed = {s["name"]: s for s in result["results"]}
            retry = False
            for key, entry in sorted(pending.items()):
                assert entry.schedule is not None
                found = listed.get(entry.schedule.name)
                if found is None or found.get("cronSchedule") != entry.schedule.cron:
                    # Not (yet) in the loaded location: an older load, a cron Dagster refused, or a
                    # code location that lists other namespaces (KUBETASK_NAMESPACES).
                    retry |= self._not_listed(key, entry, found)
                    continue
                state = found.get("scheduleState") or {}
                action = desired_toggle(entry, state.get("status"))
                if action == "start":
                    self._toggle(
                        queries.START_SCHEDULE,
                        {"selector": {**selector, "scheduleName": entry.schedule.name}},
                        "startSchedule",
                    )
                elif action == "stop":
                    self._toggle(queries.STOP_SCHEDULE, {"id": state["id"]}, "stopRunningSchedule")
                if action:
                    metrics.TOGGLES.labels(action).inc()
                    log.info(
                        "schedule %s of Batch %s/%s: %s (suspend=%s)",
                        entry.schedule.name,
                        *key,
                        "started" if action == "start" else "stopped",
                        entry.schedule.suspend,
                    )
                self._mark_synced(key, entry)
            with self._cond:
                self._sync_not_before = self._clock() + 2.0 if retry else 0.0
        except DagsterError as e:
            log.warning("could not apply spec.schedule.suspend to Dagster schedules (%s); retrying", e)
            with self._cond:
                self._sync_not_before = self._clock() + 5.0

    def _toggle(self, query: str, variables: dict[str, Any], field: str) -> None:
        result = self.dagster.execute(query, variables, mutation=True)[field]
        if result.get("__typename") != "ScheduleStateResult":
            raise DagsterError(f"{field} answered {result.get('__typename')}: {result.get('message')}")

    def _mark_synced(self, key: Key, entry: BatchEntry) -> None:
        with self._cond:
            current = self._entries.get(key)
            if current is not None and (current.uid, current.generation) == (entry.uid, entry.generation):
                self._synced[key] = (entry.uid, entry.generation)
            self._sync_tries.pop(key, None)

    def _not_listed(self, key: Key, entry: BatchEntry, found: Mapping[str, Any] | None) -> bool:
        tries = self._sync_tries.get(key, 0) + 1
        self._sync_tries[key] = tries
        if tries < self.sync_attempts:
            return True
        assert entry.schedule is not None
        log.warning(
            "Batch %s/%s: schedule %s %s in code location %s; not managing its on/off state",
            *key,
            entry.schedule.name,
            "has another cron" if found else "is missing",
            self.dagster.location,
        )
        self._mark_synced(key, entry)
        return False

    # --- Batch status ------------------------------------------------------------------------

    def _refresh_statuses(self) -> float:
        now = self._clock()
        with self._cond:
            due = [k for k, t in self._status_due.items() if t <= now]
            for k in due:
                del self._status_due[k]
        for key in due:
            try:
                self.refresh_status(*key)
                self._status_failures.pop(key, None)
            except Exception as e:
                failures = self._status_failures.get(key, 0) + 1
                self._status_failures[key] = failures
                delay = min(60.0, 2.0 ** min(failures, 6))
                log.warning("Batch %s/%s: status refresh failed (%s); retrying in %.0f s", *key, e, delay)
                with self._cond:
                    self._status_due.setdefault(key, self._clock() + delay)
        with self._cond:
            return min((t for t in self._status_due.values()), default=now + 30.0) - self._clock()

    def refresh_status(self, namespace: str, name: str) -> None:
        """Batch ``status.active`` / ``lastSuccessfulTime`` from its BatchRuns; prune its history."""
        batch = self.kube.get(BATCHES, namespace, name)
        if batch is None:
            return
        uid = batch["metadata"]["uid"]
        items = self.kube.list(BATCHRUNS, [namespace], label_selector=f"{vocabulary.LABEL_BATCH}={name}")
        runs = [r for r in items if schedules.owned_by(r, uid)]
        sched = objects.spec(batch).get("schedule")
        if sched:
            ok_limit, failed_limit = schedules.history_limits(sched)
            for victim in schedules.runs_to_prune(runs, ok_limit, failed_limit):
                if self.kube.delete(BATCHRUNS, namespace, victim):
                    log.info("Batch %s/%s: deleted BatchRun %s (history limits)", namespace, name, victim)
                runs = [r for r in runs if r["metadata"]["name"] != victim]
        current = objects.status(batch)
        patch = schedules.status_from_runs(runs, current)
        if schedules.status_changed(current, patch):
            self.kube.patch_status(BATCHES, namespace, name, None, patch)
