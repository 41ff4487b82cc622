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
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from kubetask import objects, vocabulary
from kubetask.api import BatchRunPhase, TaskPhase
from kubetask.api.batch import DEFAULT_PARALLELISM
from kubetask.domain import batches, results
from kubetask.domain import runs as contract
from kubetask.domain import status as task_status
from kubetask.objects import Key, Obj

from . import metrics
from .cache import ObjectStore
from .dagster.client import PARENT_RUN_ID_TAG, DagsterError, DagsterRejected, DagsterUnavailable, RunInfo, RunNotFound
from .kube import BATCHES, BATCHRUNS, TASKS, Conflict, Gone, KubeApi
from .reconcile import FOLLOWED, ReconcileLoop
from .tenancy import TenantGate

log = logging.getLogger(__name__)

PENDING = BatchRunPhase.PENDING.value
RUNNING = BatchRunPhase.RUNNING.value
PAUSED = BatchRunPhase.PAUSED.value
COMPLETED = BatchRunPhase.COMPLETED.value
FAILED = BatchRunPhase.FAILED.value
STOPPED = BatchRunPhase.STOPPED.value

BY_BATCHRUN = "batchrun"
"""Index of the Task cache: (namespace, BatchRun name) of Tasks labelled ``kubetask.io/batch-run``."""

_PROGRESS_KEYS = ("total", "pending", "queued", "running", "completed", "failed", "stopped")
_MISSING: Any = object()


# --- what the decisions ask of a BatchRun and its Tasks ------------------------------------------


def is_terminal(obj: Mapping[str, Any]) -> bool:
    return objects.phase_of(obj) in vocabulary.BATCHRUN_TERMINAL


def paused(obj: Mapping[str, Any]) -> bool:
    return vocabulary.pause_requested(objects.annotations_of(obj))


def rerun_request(obj: Mapping[str, Any]) -> str | None:
    return vocabulary.rerun_request(objects.annotations_of(obj))


def stop_requested(obj: Mapping[str, Any]) -> bool:
    return vocabulary.stop_requested(objects.annotations_of(obj))


def executed_elsewhere(obj: Mapping[str, Any]) -> bool:
    """Created by a schedule tick or an asset materialisation, which runs it itself."""
    return bool(objects.annotations_of(obj).get(vocabulary.EXECUTED_BY))


def total_of(obj: Mapping[str, Any]) -> int | None:
    """``status.progress.total``: set by ``expand_batch`` once every Task exists."""
    value = (objects.status(obj).get("progress") or {}).get("total")
    return int(value) if value is not None else None


def finalized(obj: Mapping[str, Any]) -> bool:
    """Terminal, with the outcome of its current run recorded by the bridge (``Succeeded`` True/False
    naming the run). A terminal phase an op wrote is not final until the run has ended."""
    if not is_terminal(obj):
        return False
    succeeded = objects.condition(obj, vocabulary.SUCCEEDED)
    if succeeded is None or succeeded.get("status") not in ("True", "False"):
        return False
    run_id = objects.run_id_of(obj)
    return run_id is None or run_id in str(succeeded.get("message") or "")


def batchrun_of(task: Mapping[str, Any]) -> str | None:
    return objects.labels_of(task).get(vocabulary.LABEL_BATCH_RUN) or None


def batchrun_index(task: Mapping[str, Any]) -> list[Key]:
    name = batchrun_of(task)
    return [(objects.meta(task).get("namespace") or "", name)] if name else []


def task_reason(task: Mapping[str, Any]) -> str | None:
    """The Task's outcome reason (its ``Succeeded`` condition), as ``summarize`` reads it."""
    return (objects.condition(task, vocabulary.SUCCEEDED) or {}).get("reason")


def task_rows(tasks: Iterable[Mapping[str, Any]]) -> list[tuple[str, str | None, str | None]]:
    """``(name, phase, reason)`` of Tasks, by their index in the BatchRun (then by name)."""
    rows = [(objects.meta(t).get("name") or "", objects.phase_of(t), task_reason(t)) for t in tasks]
    return sorted(rows, key=lambda r: (batches.index_of(r[0]) if batches.index_of(r[0]) is not None else 1 << 30, r[0]))


def _normal_progress(progress: Mapping[str, Any] | None) -> dict[str, int]:
    progress = progress or {}
    return {k: int(progress.get(k) or 0) for k in _PROGRESS_KEYS}


# --- the decisions -----------------------------------------------------------------------------


class BatchRunReconciler(ReconcileLoop):
    """What the bridge does about each BatchRun. Thread-safe; ``reconcile_key`` never raises."""

    CAUSES = {"stop": "batchrun-stop", "deleted": "batchrun-deleted", "orphan": "batchrun-orphan"}
    SWEEP_TRUSTS_CACHE = True

    def __init__(
        self,
        kube: KubeApi,
        dagster: Any,
        store: ObjectStore,
        task_store: ObjectStore,
        *,
        job: str = contract.BATCH_JOB,
        run_url: Callable[[str], str] = lambda run_id: f"http://127.0.0.1:3000/runs/{run_id}",
        run_config: Callable[[str, str, str, int], dict[str, Any]] = contract.batch_run_config,
        grace: float = 5.0,
        debounce: float = 1.0,
        namespaces: Sequence[str] = (),
        enqueue: Callable[[Key, float], None] | None = None,
        clock: Callable[[], float] = time.time,
        terminate_every: float = 30.0,
        tenancy: TenantGate | None = None,
    ):
        """``store`` caches BatchRuns; ``task_store`` is the Task cache (with the ``BY_BATCHRUN`` index),
        whose changes wake the BatchRuns of the Tasks that changed."""
        super().__init__(
            vocabulary.KIND_BATCHRUN,
            BATCHRUNS,
            kube,
            dagster,
            store,
            namespaces,
            enqueue,
            clock,
            terminate_every,
            tenancy,
        )
        self.task_store = task_store
        self.job = job
        self.run_url = run_url
        self.run_config = run_config
        self.grace = grace
        self.debounce = debounce
        self._runs: dict[str, RunInfo | None] = {}  # run id -> last known RunInfo (None: Dagster has no such run)
        self._active: dict[str, list[RunInfo]] = {}  # BatchRun uid -> its active runs, newest first
        self._last_write: dict[Key, float] = {}  # key -> when the bridge last wrote its progress
        self._wake: dict[Key, float] = {}  # key -> when a debounced progress write is due
        self._not_before: dict[str, float] = {}  # run id -> when its outcome may be written (end + grace)
        task_store.subscribe(self._task_changed)

    # --- plumbing ------------------------------------------------------------------------------

    def _write(self, obj: Obj, patch: Mapping[str, Any], kind: str) -> Obj:
        updated = self._write_status(obj, patch)
        metrics.BATCHRUN_STATUS_WRITES.labels(kind).inc()
        return updated

    def _clear_annotations(self, obj: Obj, names: Iterable[str]) -> Obj:
        present = [n for n in names if n in objects.annotations_of(obj)]
        if not present:
            return obj
        ns, name = objects.key_of(obj)
        updated = self.kube.patch_metadata(
            BATCHRUNS, ns, name, objects.meta(obj).get("resourceVersion"), {"annotations": dict.fromkeys(present)}
        )
        self.store.put(updated)
        return updated

    def _conditions(self, obj: Mapping[str, Any], status: str, reason: str, message: str) -> list[dict[str, Any]]:
        current = objects.status(obj).get("conditions")
        return task_status.outcome_conditions(current, status, reason, message, self._now(), objects.generation_of(obj))

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

    def owned_tasks(self, namespace: str, name: str, owner_uid: str | None = None) -> list[Obj]:
        """The cached Tasks of a BatchRun (owned by ``owner_uid`` when given)."""
        tasks = self.task_store.by_index(BY_BATCHRUN, (namespace, name))
        kind = vocabulary.KIND_BATCHRUN
        return [t for t in tasks if owner_uid is None or owner_uid in objects.owner_uids(t, kind)]

    def rows(self, namespace: str, name: str, owner_uid: str | None = None) -> list[tuple[str, str | None, str | None]]:
        """``(name, phase, reason)`` of the cached Tasks of a BatchRun (owned by ``owner_uid`` when given)."""
        return task_rows(self.owned_tasks(namespace, name, owner_uid))

    # --- watch events --------------------------------------------------------------------------

    def observe(self, event_type: str | None, obj: Obj) -> None:
        """A watch event for a BatchRun (``None`` type: seen in a listing). Non-blocking."""
        try:
            key = objects.key_of(obj)
        except (KeyError, TypeError):
            return
        if event_type == "DELETED":
            gone = self._forget(key, obj)
            with self._lock:
                self._last_write.pop(key, None)
                self._wake.pop(key, None)
                deleted = not finalized(gone) and bool(objects.run_id_of(gone) or not is_terminal(gone))
                if deleted:
                    self._deleted.setdefault(key, []).append(gone)
            if deleted:
                self.enqueue(key)
            return
        self.store.put(obj)
        self.enqueue(key)

    def _task_changed(self, old: Obj | None, new: Obj | None) -> None:
        """The Task cache changed: wake the BatchRuns whose Tasks these are (were)."""
        affected = {k for t in (old, new) if t is not None for k in batchrun_index(t)}
        for key in affected:
            if self.store.get(key) is not None:
                self.enqueue(key)

    # --- one BatchRun --------------------------------------------------------------------------

    def _reconcile_once(self, obj: Obj) -> float | None:
        run_id = objects.run_id_of(obj)
        if objects.being_deleted(obj):
            if run_id and not finalized(obj):
                self._terminate(obj, run_id, "deleted")
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
                return self._later(objects.key_of(obj), not_before)  # the grace after the run's end is not over
            return self._run_ended(obj, run_id)
        if is_terminal(obj):
            return self._maybe_reopen(obj, run_id)
        return self._progress(obj)

    # --- submission ----------------------------------------------------------------------------

    def _parallelism(self, obj: Obj) -> int:
        spec = objects.spec(obj)
        if spec.get("parallelism"):
            return int(spec["parallelism"])
        if spec.get("batchSpec") is not None:
            return int((spec["batchSpec"] or {}).get("parallelism") or DEFAULT_PARALLELISM)
        ref = spec.get("batchRef")
        if ref:
            batch = self.kube.get(BATCHES, objects.key_of(obj)[0], ref)
            if batch is not None:  # a missing Batch: expand_batch fails the BatchRun with BatchNotFound
                return int(objects.spec(batch).get("parallelism") or DEFAULT_PARALLELISM)
        return DEFAULT_PARALLELISM

    def _submit(self, obj: Obj) -> float | None:
        try:
            return self._submit_once(obj)
        except DagsterUnavailable as e:
            metrics.BATCHRUN_SUBMISSION_ERRORS.labels("unavailable").inc()
            self._note_unavailable(obj, e)
            raise

    def _fail_unsubmitted(self, obj: Obj, reason: str, message: str) -> None:
        """End a BatchRun that gets no run: Failed with ``reason``, a warning Event, a log line."""
        status = {
            "phase": FAILED,
            "completionTime": task_status.rfc3339(self._now()),
            "conditions": self._conditions(obj, "False", reason, message),
            "observedGeneration": objects.generation_of(obj),
        }
        self._write(obj, status, "final")
        self._event(obj, reason, message, warning=True)
        log.warning("BatchRun %s: %s", objects.name_of(obj), message)

    def _submit_once(self, obj: Obj) -> float | None:
        ns, name = objects.key_of(obj)
        existing = self._existing_run(obj)
        if existing is not None:
            run_id = existing.run_id
            metrics.BATCHRUN_ADOPTED.labels("existing").inc()
            log.info(
                "BatchRun %s: found its run %s (%s) by tags; not submitting again",
                objects.name_of(obj),
                run_id,
                existing.status,
            )
            with self._lock:
                self._runs[run_id] = existing
        else:
            refusal = self._not_enabled(obj)
            if refusal is not None:
                self._fail_unsubmitted(obj, vocabulary.NAMESPACE_NOT_ENABLED, refusal)
                return None
            config = self.run_config(ns, name, objects.uid_of(obj), self._parallelism(obj))
            started = time.monotonic()
            try:
                run_id = self.dagster.submit_run(self.job, config, contract.run_tags(obj, vocabulary.KIND_BATCHRUN))
            except DagsterRejected as e:
                metrics.BATCHRUN_SUBMISSION_ERRORS.labels("rejected").inc()
                self._fail_unsubmitted(
                    obj, vocabulary.RUN_SUBMISSION_FAILED, f"Dagster refused to run job {self.job}: {e}"
                )
                return None
            metrics.SUBMIT_LATENCY.observe(time.monotonic() - started)
            metrics.BATCHRUN_SUBMISSIONS.inc()
        url = self.run_url(run_id)
        patch: dict[str, Any] = {
            "dagsterRunId": run_id,
            "dagsterRunUrl": url,
            "observedGeneration": objects.generation_of(obj),
            "conditions": self._conditions(obj, "Unknown", vocabulary.RUN_SUBMITTED, f"Dagster run {run_id} submitted"),
        }
        if objects.phase_of(obj) is None:
            patch["phase"] = PENDING
        self._write(obj, patch, "submitted")
        verb = "found" if existing is not None else "submitted"
        self._event(obj, vocabulary.RUN_SUBMITTED, f"Dagster run {run_id} {verb}: {url}")
        log.info("BatchRun %s: Dagster run %s %s", objects.name_of(obj), run_id, verb)
        return None

    def _find_executor_run(self, obj: Obj) -> float | None:
        """A BatchRun its creator runs (schedule tick): expand_batch records the run; until then, look
        the run up by tags, so that a run that fails before expanding still ends the BatchRun."""
        existing = self._existing_run(obj)
        if existing is None:
            return self._progress(obj)  # a pause shows before the run starts
        url = self.run_url(existing.run_id)
        patch: dict[str, Any] = {"dagsterRunId": existing.run_id, "dagsterRunUrl": url}
        if objects.phase_of(obj) is None:
            patch["phase"] = PENDING
        self._write(obj, patch, "adopted")
        with self._lock:
            self._runs[existing.run_id] = existing
        metrics.BATCHRUN_ADOPTED.labels("existing").inc()
        creator = objects.annotations_of(obj).get(vocabulary.EXECUTED_BY)
        self._event(
            obj, vocabulary.RUN_ADOPTED, f"following Dagster run {existing.run_id} (started by {creator}): {url}"
        )
        return None

    def _note_unavailable(self, obj: Obj, error: Exception) -> None:
        reason = vocabulary.DAGSTER_UNAVAILABLE
        if (objects.condition(obj, vocabulary.READY) or {}).get("reason") == reason:
            return
        message = "Dagster is unreachable; the BatchRun is submitted when it is back"
        patch: dict[str, Any] = {"conditions": self._conditions(obj, "Unknown", reason, message)}
        if objects.phase_of(obj) is None:
            patch["phase"] = PENDING
        try:
            self._write(obj, patch, "submitted")
            self._event(obj, reason, f"{message} ({error})", warning=True)
        except Exception as e:  # noqa: BLE001 - the retry matters more than this note
            log.debug("BatchRun %s: could not note Dagster's absence: %s", objects.name_of(obj), e)

    # --- progress ------------------------------------------------------------------------------

    def summary(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Progress and failed Tasks from the cached Tasks; None before ``expand_batch`` set the total."""
        total = total_of(obj)
        if total is None:
            return None
        ns, name = objects.key_of(obj)
        tasks = self.owned_tasks(ns, name, objects.uid_of(obj))
        summary = task_status.batchrun_summary(task_rows(tasks), total, paused=paused(obj), stopped=False)
        return summary | results.totals(objects.status(t) for t in tasks)

    def _progress(self, obj: Obj) -> float | None:
        """Write phase (Running/Paused), progress and failedTasks when they changed, debounced."""
        key = objects.key_of(obj)
        now = self.clock()
        with self._lock:
            last = self._last_write.get(key)
        if last is not None and now - last < self.debounce:  # look again when the second is over
            metrics.BATCHRUN_PROGRESS_SKIPPED.labels("debounced").inc()
            return self._later(key, last + self.debounce)
        current = objects.phase_of(obj)
        summary = self.summary(obj)
        phase: str | None
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
            if summary["progress"] != _normal_progress(objects.status(obj).get("progress")):
                patch["progress"] = summary["progress"]
            if summary["failedTasks"] != list(objects.status(obj).get("failedTasks") or []):
                patch["failedTasks"] = summary["failedTasks"]
            for field in ("usage", "pullRequests"):
                if summary[field] != objects.status(obj).get(field):
                    patch[field] = summary[field]
        if not patch:
            metrics.BATCHRUN_PROGRESS_SKIPPED.labels("unchanged").inc()
            return None
        self._write(obj, patch, "progress")
        with self._lock:
            self._last_write[key] = now
            self._wake.pop(key, None)
        if "phase" in patch and phase == PAUSED:
            self._event(
                obj, vocabulary.PAUSED, f"{vocabulary.PAUSE} is set: no further Task starts; running Tasks finish"
            )
        elif "phase" in patch and current == PAUSED:
            self._event(obj, vocabulary.RESUMED, f"{vocabulary.PAUSE} was removed: Tasks start again")
        return None

    def _maybe_reopen(self, obj: Obj, run_id: str) -> float | None:
        """Terminal, not finalized, and its run is active. If the terminal phase is an older run's
        outcome (its Succeeded condition is final) and Tasks run again, a rerun is under way (e.g. a
        re-execution of all steps, whose expand_batch recorded the new run): Running again. Otherwise
        an op wrote the outcome ahead of the run's end: wait for the end."""
        succeeded = objects.condition(obj, vocabulary.SUCCEEDED)
        if succeeded is None or succeeded.get("status") not in ("True", "False"):
            return None
        ns, name = objects.key_of(obj)
        if all(phase in vocabulary.TASK_TERMINAL for _, phase, _ in self.rows(ns, name, objects.uid_of(obj))):
            return None
        message = f"Dagster run {run_id} executes the BatchRun again"
        self._write(obj, self._reopened(obj, run_id, vocabulary.RUN_ADOPTED, message), "adopted")
        self._event(obj, vocabulary.RUN_ADOPTED, f"{message}: {self.run_url(run_id)}")
        metrics.BATCHRUN_ADOPTED.labels("successor").inc()
        return None

    # --- stop ----------------------------------------------------------------------------------

    def _stop_without_run(self, obj: Obj) -> float | None:
        existing = self._existing_run(obj)
        if existing is not None:  # submitted before a restart: record it, then stop it like any run
            self._write(
                obj, {"dagsterRunId": existing.run_id, "dagsterRunUrl": self.run_url(existing.run_id)}, "submitted"
            )
            if not existing.finished:
                self._request_stop(obj, existing.run_id)
            return None
        message = f"stopped on request ({vocabulary.STOP}) before its run started"
        self._write(
            obj,
            {
                "phase": STOPPED,
                "completionTime": task_status.rfc3339(self._now()),
                "conditions": self._conditions(obj, "False", vocabulary.STOP_REQUESTED, message),
            },
            "stopped",
        )
        self._event(obj, vocabulary.STOP_REQUESTED, message)
        return None

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

    def _runs_of(self, obj: Obj, limit: int) -> list[RunInfo]:
        tags = {vocabulary.TAG_KIND: vocabulary.KIND_BATCHRUN, vocabulary.TAG_UID: objects.uid_of(obj)}
        return self.dagster.find_runs(tags, limit=limit)  # type: ignore[no-any-return]

    def _newest_successor(self, obj: Obj, run_id: str, run: RunInfo | None) -> RunInfo | None:
        """A run of this BatchRun newer than ``run`` (a re-execution started from Dagster), or None."""
        for other in self._runs_of(obj, 20):
            if other.run_id == run_id:
                continue
            if run is None or (other.creation_time or 0) > (run.creation_time or 0):
                return other
        return None

    def _successor_hint(self, obj: Obj) -> RunInfo | None:
        run_id = objects.run_id_of(obj)
        with self._lock:
            candidates = list(self._active.get(objects.uid_of(obj), ()))
        return next((r for r in candidates if r.run_id != run_id), None)

    def _adopt_if_newer(self, obj: Obj, candidate: RunInfo) -> float | None:
        run_id = objects.run_id_of(obj) or ""
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
            log.warning(
                "BatchRun %s: runs %s and %s are both active; following %s",
                objects.name_of(obj),
                run_id,
                candidate.run_id,
                run_id,
            )
            return None
        if current is not None and (candidate.creation_time or 0) <= (current.creation_time or 0):
            return None
        return self._adopt(obj, candidate)

    def _adopt(self, obj: Obj, run: RunInfo) -> float | None:
        """Follow ``run`` (a re-execution started from Dagster, or a rerun the bridge launched before a
        restart) instead of the BatchRun's current run: phase Running again; a pending rerun request is
        satisfied by it."""
        previous = objects.run_id_of(obj)
        obj = self._clear_annotations(obj, [vocabulary.RERUN])
        parent = run.tags.get(PARENT_RUN_ID_TAG)
        origin = f"a re-execution of {parent}" if parent else "started from Dagster"
        message = f"following Dagster run {run.run_id} ({origin}) instead of {previous}"
        self._write(obj, self._reopened(obj, run.run_id, vocabulary.RUN_ADOPTED, message), "adopted")
        with self._lock:
            self._runs[run.run_id] = run
        self._event(obj, vocabulary.RUN_ADOPTED, f"{message}: {self.run_url(run.run_id)}")
        metrics.BATCHRUN_ADOPTED.labels("successor").inc()
        log.info("BatchRun %s: %s", objects.name_of(obj), message)
        return None

    def _end_task(self, task: Obj, batchrun: str, run_id: str, run: RunInfo | None) -> Obj | None:
        """Mark a Task the run never finished; its latest version (None: gone).

        A Task that was running when its run failed (the run worker died) is Failed (RunFailed): a
        rerun picks it up. One the run never started, or stopped, is Stopped (RunEnded)."""
        ns, name = objects.key_of(task)
        how = run.status if run is not None else "missing"
        message = f"Dagster run {run_id} of BatchRun {batchrun} ended ({how}) before this Task finished"
        for _ in range(3):
            if objects.phase_of(task) in vocabulary.TASK_TERMINAL:
                return task
            current = objects.status(task)
            if how == "FAILURE" and objects.phase_of(task) == TaskPhase.RUNNING.value:
                patch = task_status.failed(
                    current, vocabulary.RUN_FAILED, f"{message}; it was running (the run worker died?)", now=self._now()
                )
            else:
                patch = task_status.stopped(current, reason=vocabulary.RUN_ENDED, message=message, now=self._now())
            try:
                updated = self.kube.patch_status(TASKS, ns, name, objects.meta(task).get("resourceVersion"), patch)
            except Conflict:
                fresh = self.kube.get(TASKS, ns, name)
                if fresh is None:
                    return None
                task = fresh
                continue
            except Gone:
                return None
            self.task_store.put(updated)
            metrics.BATCHRUN_TASKS_ENDED.inc()
            return updated
        return task

    def _finalize(self, obj: Obj, run_id: str, run: RunInfo | None) -> float | None:
        """Write the outcome of a finished (or vanished) run, from a fresh read of the BatchRun and its
        Tasks (``kubetask.domain.status.batchrun_outcome`` decides it)."""
        key = objects.key_of(obj)
        ns, name = key
        fresh = self._fetch(key)
        if fresh is None:
            self.store.remove(key)
            return None
        self.store.put(fresh)
        if objects.run_id_of(fresh) != run_id or finalized(fresh):
            self.enqueue(key)  # something else moved it on: decide again
            return None
        uid = objects.uid_of(fresh)
        tasks = [
            t
            for t in self.kube.list(TASKS, [ns], label_selector=f"{vocabulary.LABEL_BATCH_RUN}={name}")
            if uid in objects.owner_uids(t, vocabulary.KIND_BATCHRUN)
        ]
        ended_tasks = 0
        if any(objects.phase_of(t) not in vocabulary.TASK_TERMINAL for t in tasks):
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
                if objects.phase_of(t) in vocabulary.TASK_TERMINAL:
                    kept.append(t)
                    continue
                updated = self._end_task(t, name, run_id, run)
                if updated is not None:
                    kept.append(updated)
                    ended = objects.phase_of(updated) == TaskPhase.STOPPED.value
                    ended_tasks += ended and task_reason(updated) == vocabulary.RUN_ENDED
            tasks = kept
        outcome = task_status.batchrun_outcome(
            run_id,
            run.status if run is not None else None,
            current_phase=objects.phase_of(fresh),
            ready=objects.condition(fresh, vocabulary.READY),
            total=total_of(fresh),
            tasks=task_rows(tasks),
            stop_requested=stop_requested(fresh),
            ended_tasks=ended_tasks,
        )
        phase, reason, message = outcome["phase"], outcome["reason"], outcome["message"]
        totals = results.totals(objects.status(t) for t in tasks)
        if outcome["failure_detail"]:
            message += self._failure_detail(run_id)
        if reason == vocabulary.BUDGET_EXCEEDED:
            message += f"; no further Task started once the budget was spent: {results.describe_usage(totals['usage'])}"
        patch: dict[str, Any] = {"phase": phase}
        if outcome["progress"] is not None:
            patch["progress"] = outcome["progress"]
            patch["failedTasks"] = outcome["failedTasks"]
            patch.update(totals)
        patch["conditions"] = self._conditions(fresh, "True" if phase == COMPLETED else "False", reason, message)
        if not objects.status(fresh).get("completionTime"):
            patch["completionTime"] = task_status.rfc3339(self._now())
        self._write(fresh, patch, "final")
        self._event(fresh, reason, message, warning=phase != COMPLETED)
        log.info("BatchRun %s: %s -> %s (%s)", objects.name_of(fresh), message, phase, reason)
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
        run_id = objects.run_id_of(obj) or ""
        refused = vocabulary.RERUN_REFUSED
        if value.lower() != vocabulary.RERUN_FAILED:
            self._clear_annotations(obj, [vocabulary.RERUN])
            self._event(
                obj,
                refused,
                f'{vocabulary.RERUN} must be "{vocabulary.RERUN_FAILED}", not {value!r}; annotation removed',
                warning=True,
            )
            metrics.BATCHRUN_RERUNS.labels("refused").inc()
            return None
        if objects.phase_of(obj) == COMPLETED:
            return self._nothing_to_rerun(obj, "every Task completed")
        # A re-execution launched before a restart is found by its parent tag, not launched twice.
        children = self.dagster.find_runs({PARENT_RUN_ID_TAG: run_id, vocabulary.TAG_UID: objects.uid_of(obj)}, limit=5)
        if children:
            new_id = children[0].run_id
            metrics.BATCHRUN_ADOPTED.labels("rerun-found").inc()
        elif not self._owns_run(obj, run_id):  # a status naming another object's run
            self._clear_annotations(obj, [vocabulary.RERUN])
            metrics.BATCHRUN_RERUNS.labels("refused").inc()
            return None
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
                    why = f"Dagster has nothing to re-execute in run {run_id} ({e.message.strip()})"
                    return self._nothing_to_rerun(obj, why)
                metrics.BATCHRUN_SUBMISSION_ERRORS.labels("rejected").inc()
                self._clear_annotations(obj, [vocabulary.RERUN])
                self._event(
                    obj, refused, f"Dagster refused to re-execute run {run_id}: {e}; annotation removed", warning=True
                )
                metrics.BATCHRUN_RERUNS.labels("refused").inc()
                return None
            except DagsterUnavailable:
                metrics.BATCHRUN_SUBMISSION_ERRORS.labels("unavailable").inc()
                raise
        # Annotation first: a crash after it leaves a newer run that the adoption picks up; a crash
        # before it finds the run by its parent tag above.
        obj = self._clear_annotations(obj, [vocabulary.RERUN, vocabulary.STOP])
        message = f"re-executing the failed and never-started Tasks of Dagster run {run_id} in run {new_id}"
        self._write(obj, self._reopened(obj, new_id, vocabulary.RERUN_STARTED, message), "rerun")
        with self._lock:
            self._runs.pop(new_id, None)
            self._last_write.pop(objects.key_of(obj), None)
        self._event(obj, vocabulary.RERUN_STARTED, f"{message}: {self.run_url(new_id)}")
        metrics.BATCHRUN_RERUNS.labels("started").inc()
        log.info("BatchRun %s: %s", objects.name_of(obj), message)
        return None

    def _steps_to_rerun(self, obj: Obj) -> list[str]:
        """The mapped steps of every Task that did not complete (failed, stopped or never started),
        plus the summary; empty when the BatchRun has no Tasks to go by."""
        ns, name = objects.key_of(obj)
        tasks = [
            t
            for t in self.kube.list(TASKS, [ns], label_selector=f"{vocabulary.LABEL_BATCH_RUN}={name}")
            if objects.uid_of(obj) in objects.owner_uids(t, vocabulary.KIND_BATCHRUN)
        ]
        total = total_of(obj) or 0
        if not tasks or len(tasks) < total:
            return []
        steps = []
        for task in tasks:
            index = batches.index_of(task["metadata"]["name"])
            if index is not None and objects.phase_of(task) != COMPLETED:
                steps.append(f"run_batch_task[{batches.mapping_key(index)}]")
        return sorted(steps) + ["summarize_batch"] if steps else []

    def _nothing_to_rerun(self, obj: Obj, why: str) -> float | None:
        self._clear_annotations(obj, [vocabulary.RERUN])
        self._event(obj, vocabulary.NOTHING_TO_RERUN, f"nothing to rerun: {why}; annotation removed")
        metrics.BATCHRUN_RERUNS.labels("nothing").inc()
        return None

    # --- periodic work -------------------------------------------------------------------------

    def periodic(self) -> None:
        """One pass: gauges; statuses of the runs followed (one batched query) and the active runs of
        batch_job (one query, for adoptions); enqueue every BatchRun that may need work. Only enqueues."""
        objs = [o for o in self.store.snapshot() if not self.namespaces or objects.key_of(o)[0] in self.namespaces]
        self._count_phases(objs, [p.value for p in BatchRunPhase], metrics.BATCHRUNS)
        try:
            active = self.dagster.find_runs(
                {vocabulary.TAG_KIND: vocabulary.KIND_BATCHRUN}, statuses=FOLLOWED, limit=1000
            )
        except DagsterError as e:
            log.debug("periodic pass: no active runs from Dagster: %s", e)
        else:
            by_uid: dict[str, list[RunInfo]] = {}
            for run in active:
                if run.tags.get(vocabulary.TAG_UID):
                    by_uid.setdefault(run.tags[vocabulary.TAG_UID], []).append(run)
            with self._lock:
                self._active = by_uid
        following = [o for o in objs if objects.run_id_of(o) and not finalized(o)]
        if following:
            ids = [objects.run_id_of(o) or "" for o in following]
            try:
                found = self.dagster.get_runs(ids)
            except DagsterError as e:
                log.debug("periodic pass: no run statuses from Dagster: %s", e)
            else:
                with self._lock:
                    for followed in ids:
                        self._runs[followed] = found.get(followed)
        with self._lock:
            active_uids = {uid: [r.run_id for r in runs] for uid, runs in self._active.items()}
        for o in objs:
            key = objects.key_of(o)
            run_id = objects.run_id_of(o)
            if objects.being_deleted(o) or (run_id is None and not is_terminal(o)):
                self._enqueue_unless_backing_off(key)
            elif run_id is not None and not finalized(o):
                self._enqueue_unless_backing_off(key)  # progress repair, stop repeat, the run's end
            elif run_id is not None and (
                rerun_request(o) is not None or any(r != run_id for r in active_uids.get(objects.uid_of(o), ()))
            ):
                self._enqueue_unless_backing_off(key)
        with self._lock:
            deleted = list(self._deleted)
        for key in deleted:
            self.enqueue(key)
        run_ids = {objects.run_id_of(o) for o in objs if objects.run_id_of(o)}
        keys = {objects.key_of(o) for o in objs}
        self._prune(self._not_before)
        with self._lock:
            for run_id in [r for r in self._runs if r not in run_ids]:
                del self._runs[run_id]
            for table in (self._last_write, self._wake):
                for key in [k for k in table if k not in keys]:
                    del table[key]

    def relist(self, listed_since: float) -> list[Obj]:
        """Repair the BatchRun cache from a full list; enqueue every BatchRun."""
        items = super().relist(listed_since)
        for obj in items:
            self.enqueue(objects.key_of(obj))
        return items
