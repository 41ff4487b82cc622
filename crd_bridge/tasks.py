"""Reconcile Tasks with Dagster runs: submit, queue, stop, and repair what a dead run left behind.

Level-based: every decision is taken from the Task as it is now (and Dagster's run as it is now), so a
missed watch event, a restart or a retry only delays work, never duplicates it. Status writes carry
the ``resourceVersion`` of the Task the decision was taken on, so a concurrent write by the run's ops
answers 409 and the bridge re-reads and decides again: it never overwrites a phase the run advanced.

``Reconciler`` holds the decisions: ``observe`` takes watch events, ``reconcile_key`` runs in workers
and never raises, ``periodic`` is the drift/queue/retry pass, ``sweep_orphans`` terminates active runs
whose Task is gone, ``relist`` repairs the cache. The queue questions (active Tasks per
WorkspaceConfig, FIFO order of the waiting ones) are answered from the cache's workspace index.

Tasks carrying ``kubetask.io/executed-by`` belong to a BatchRun's run: the bridge never submits, stops
or repairs them (they still count against their WorkspaceConfig's limit when active).

Tasks that arrive in a burst share a pooled run (``crd_bridge.pools``): the bridge never terminates a
pooled run for one of its Tasks; the Task's own step sees its stop annotation or its deletion.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubetask import objects, vocabulary
from kubetask.api import TaskPhase
from kubetask.api.workspace import DEFAULT_WORKSPACE_CONFIG
from kubetask.domain import runs as contract
from kubetask.domain import status as task_status
from kubetask.objects import Key, Obj

from . import metrics
from .cache import ObjectStore, WorkspaceLimits
from .dagster.client import DagsterError, DagsterRejected, DagsterUnavailable, RunInfo, RunNotFound
from .kube import TASKS, WORKSPACE_CONFIGS, Conflict, KubeApi
from .pools import PoolPolicy, TaskPools, pool_of, run_url_of_step
from .reconcile import ReconcileLoop
from .tenancy import TenantGate

log = logging.getLogger(__name__)

PENDING = TaskPhase.PENDING.value
QUEUED = TaskPhase.QUEUED.value
RUNNING = TaskPhase.RUNNING.value
FAILED = TaskPhase.FAILED.value
STOPPED = TaskPhase.STOPPED.value

TRICKLE_LOOK_SECONDS = 0.1  # how often a pool waiting for a slow burst looks for its Tasks
SUBMITTED_RUN_STATUS = "QUEUED"  # what a run just submitted is taken to be until it is read
RUN_READ_MAX_AGE = 1.0
"""Seconds a run's status, once read (or just submitted), serves the next watch events of its Tasks: each
status write brings a Task back to ``_follow``, whose drift check only matters once the run ended; the
periodic pass reads every run afresh."""

BY_WORKSPACE = "workspace"
"""Index of the Task cache: (namespace, WorkspaceConfig name)."""


# --- what the decisions ask of a Task ----------------------------------------------------------


def workspace_of(obj: Mapping[str, Any]) -> str:
    return objects.spec(obj).get("workspaceConfigRef") or DEFAULT_WORKSPACE_CONFIG


def count_reported_usage(old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Add a result the watch shows a Task gain to the usage counters. Results seen in a first listing
    are not counted: a bridge that restarts would count them again (Prometheus copes with a counter's reset)."""
    result = objects.status(new).get("result")
    if not isinstance(result, Mapping) or result == objects.status(old).get("result"):
        return
    labels = (objects.meta(new).get("namespace") or "", workspace_of(new))
    usage = result.get("usage") or {}
    for direction in ("input", "output"):
        tokens = usage.get(f"{direction}Tokens")
        if tokens:
            metrics.AGENT_TOKENS.labels(*labels, direction).inc(tokens)
    if usage.get("costUSD"):
        metrics.AGENT_COST.labels(*labels).inc(usage["costUSD"])
    if result.get("pullRequests"):
        metrics.AGENT_PULL_REQUESTS.labels(*labels).inc(len(result["pullRequests"]))


def workspace_index(obj: Mapping[str, Any]) -> list[Key]:
    return [(objects.meta(obj).get("namespace") or "", workspace_of(obj))]


def is_terminal(obj: Mapping[str, Any]) -> bool:
    return objects.phase_of(obj) in vocabulary.TASK_TERMINAL


def executed_elsewhere(obj: Mapping[str, Any]) -> bool:
    """Created and run by a BatchRun's run (or a schedule tick, for a BatchRun): not the bridge's to run."""
    return bool(objects.annotations_of(obj).get(vocabulary.EXECUTED_BY))


def stop_requested(obj: Mapping[str, Any]) -> bool:
    return vocabulary.stop_requested(objects.annotations_of(obj))


def is_active(obj: Mapping[str, Any]) -> bool:
    """Holds a WorkspaceConfig slot: Pending or Running with a run."""
    return objects.phase_of(obj) in (PENDING, RUNNING) and objects.run_id_of(obj) is not None


def is_waiting(obj: Mapping[str, Any]) -> bool:
    """Needs a run from the bridge (and a slot, when its WorkspaceConfig has a limit)."""
    return not (
        executed_elsewhere(obj)
        or is_terminal(obj)
        or objects.run_id_of(obj)
        or objects.being_deleted(obj)
        or stop_requested(obj)
    )


# --- the decisions -----------------------------------------------------------------------------


class Reconciler(ReconcileLoop):
    """What the bridge does about each Task. Thread-safe; ``reconcile_key`` never raises."""

    def __init__(
        self,
        kube: KubeApi,
        dagster: Any,
        store: ObjectStore,
        limits: WorkspaceLimits,
        *,
        job: str = contract.TASK_JOB,
        run_url: Callable[[str], str] = lambda run_id: f"http://127.0.0.1:3000/runs/{run_id}",
        grace: float = 5.0,
        namespaces: Sequence[str] = (),
        enqueue: Callable[[Key, float], None] | None = None,
        clock: Callable[[], float] = time.time,
        terminate_every: float = 30.0,
        tenancy: TenantGate | None = None,
        pooling: PoolPolicy | None = None,
    ):
        """``store`` is the Task cache, with the ``BY_WORKSPACE`` index; ``pooling``: when Tasks share a
        run (None: never)."""
        super().__init__(
            vocabulary.KIND_TASK, TASKS, kube, dagster, store, namespaces, enqueue, clock, terminate_every, tenancy
        )
        self.limits = limits
        self.job = job
        self.run_url = run_url
        self.grace = grace
        self._ws_locks: dict[Key, threading.Lock] = {}
        self._dagster_failing = False
        self.pools = TaskPools(kube, dagster, pooling or PoolPolicy(max_tasks=1), clock=self.clock)
        self._runs_read: dict[str, tuple[float, RunInfo]] = {}  # run id -> (read at, the run)

    # --- plumbing ------------------------------------------------------------------------------

    def _ws_lock(self, namespace: str, workspace: str) -> threading.Lock:
        with self._lock:
            return self._ws_locks.setdefault((namespace, workspace), threading.Lock())

    def _patch(self, obj: Obj, patch: Mapping[str, Any]) -> Obj:
        updated = self._write_status(obj, patch)
        if "phase" in patch:
            metrics.TRANSITIONS.labels(patch["phase"]).inc()
        return updated

    def in_workspace(self, namespace: str, workspace: str) -> list[Obj]:
        return self.store.by_index(BY_WORKSPACE, (namespace, workspace))

    def active_count(self, namespace: str, workspace: str, exclude_uid: str | None = None) -> int:
        return sum(
            1 for t in self.in_workspace(namespace, workspace) if is_active(t) and objects.uid_of(t) != exclude_uid
        )

    def waiting(self, namespace: str, workspace: str) -> list[Obj]:
        """Tasks of the WorkspaceConfig that wait for a run, oldest first (FIFO)."""
        return sorted((t for t in self.in_workspace(namespace, workspace) if is_waiting(t)), key=objects.fifo_key)

    # --- watch events --------------------------------------------------------------------------

    def observe(self, event_type: str | None, obj: Obj) -> None:
        """A watch event for a Task (``None`` type: seen in the initial listing). Non-blocking."""
        try:
            key = objects.key_of(obj)
        except (KeyError, TypeError):
            return
        if event_type == "DELETED":
            gone = self._forget(key, obj)
            if not executed_elsewhere(gone) and not is_terminal(gone):
                with self._lock:
                    self._deleted.setdefault(key, []).append(gone)
                self.enqueue(key)
            self.release(key[0], workspace_of(gone))  # a slot or a place in the queue freed
            return
        old = self.store.put(obj)
        current = self.store.get(key) or obj
        if old is None and is_waiting(current) and not executed_elsewhere(current):
            self.pools.arrived((key[0], workspace_of(current)))
        if old is not None:
            count_reported_usage(old, current)
        if old is not None and is_active(old) and not is_active(current):
            self.release(key[0], workspace_of(old))  # a slot freed
        if old is not None and workspace_of(old) != workspace_of(current):
            self.release(key[0], workspace_of(old))
        if not executed_elsewhere(current) and not is_terminal(current):
            self.enqueue(key)

    def observe_workspace(self, event_type: str | None, obj: Obj) -> None:
        """A watch event for a WorkspaceConfig: a changed limit may free (or take) slots."""
        try:
            key = objects.key_of(obj)
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
        waiting = self.waiting(namespace, workspace)
        known, limit = self.limits.cached(namespace, workspace)
        if known and limit is not None:
            free = max(1, limit - self.active_count(namespace, workspace))
            waiting = waiting[:free]
        for t in waiting:
            self.enqueue(objects.key_of(t))

    # --- one Task ------------------------------------------------------------------------------

    def _reconcile_once(self, obj: Obj) -> float | None:
        task = obj
        if executed_elsewhere(task) or is_terminal(task):
            return None
        run_id = objects.run_id_of(task)
        if objects.being_deleted(task):
            if run_id and not pool_of(task):  # a pooled Task's step sees the deletion itself
                self._terminate(task, run_id, "deleted")
            return None
        if stop_requested(task):
            return self._stop(task, run_id)
        if run_id is None:
            return self._admit(task)
        return self._follow(task, run_id)

    # --- submission and the queue --------------------------------------------------------------

    def _admit(self, task: Obj) -> float | None:
        refusal = self._not_enabled(task)
        if refusal is not None:
            self._fail_unsubmitted(task, vocabulary.NAMESPACE_NOT_ENABLED, refusal)
            return None
        ns, _ = objects.key_of(task)
        workspace = workspace_of(task)
        limit = self.limits.get(ns, workspace)
        try:
            if pool_of(task):
                return self._recover_claim(task)
            if limit is None:
                if self.pools.policy.enabled and self._burst(ns, workspace):
                    return self._pool(task, (ns, workspace))
                with self.pools.holding(task):
                    return self._submit(task)
            with self._ws_lock(ns, workspace):
                task = self.store.get(objects.key_of(task)) or task  # our own writes land in the store
                if objects.run_id_of(task) or is_terminal(task):
                    return None
                uid, place = objects.uid_of(task), objects.fifo_key(task)
                active = self.active_count(ns, workspace, exclude_uid=uid)
                ahead = sum(
                    1 for t in self.waiting(ns, workspace) if objects.fifo_key(t) < place and objects.uid_of(t) != uid
                )
                if active + ahead >= limit:
                    return self._queue(task, workspace, limit)
                return self._submit(task)
        except DagsterUnavailable as e:
            metrics.SUBMISSION_ERRORS.labels("unavailable").inc()
            self._note_unavailable(task, e)
            raise

    def _queue(self, task: Obj, workspace: str, limit: int) -> float | None:
        plural = "" if limit == 1 else "s"
        message = (
            f'WorkspaceConfig "{workspace}" allows at most {limit} concurrent Task{plural}; waiting for a free slot'
        )
        ready = objects.condition(task, vocabulary.READY) or {}
        reason = vocabulary.WORKSPACE_CONCURRENCY_LIMIT
        if objects.phase_of(task) == QUEUED and ready.get("reason") == reason and ready.get("message") == message:
            return None
        patch = task_status.queued(objects.status(task), message=message, now=self._now(), reason=reason)
        patch["observedGeneration"] = objects.generation_of(task)
        self._patch(task, patch)
        if objects.phase_of(task) != QUEUED:
            self._event(task, "Queued", message)
            log.info("Task %s queued: %s", objects.name_of(task), message)
        return None

    def _submit(self, task: Obj) -> float | None:
        adopted = self._existing_run(task)
        if adopted is not None:
            run_id = adopted.run_id
            metrics.ADOPTED.inc()
            log.info(
                "Task %s: found its run %s (%s) by tags; not submitting again",
                objects.name_of(task),
                run_id,
                adopted.status,
            )
        else:
            started = time.monotonic()
            try:
                run_id = self.dagster.submit_run(
                    self.job, contract.task_run_config(task), contract.run_tags(task, vocabulary.KIND_TASK)
                )
            except DagsterRejected as e:
                metrics.SUBMISSION_ERRORS.labels("rejected").inc()
                message = f"Dagster refused to run job {self.job}: {e}"
                self._fail_unsubmitted(task, vocabulary.RUN_SUBMISSION_FAILED, message)
                return None
            metrics.SUBMIT_LATENCY.observe(time.monotonic() - started)
            metrics.SUBMISSIONS.inc()
            self._remember_runs({run_id: RunInfo(run_id, SUBMITTED_RUN_STATUS)})
            created = objects.created_at(task)
            if created is not None:
                metrics.TASK_TO_RUN.observe(max(0.0, self.clock() - created))
        url = self.run_url(run_id)
        # A Conflict here propagates: the next decision finds this run by its tags; nothing is submitted twice.
        self._patch(task, self._run_recorded(task, run_id, url))
        verb = "found" if adopted is not None else "submitted"
        self._event(task, vocabulary.RUN_SUBMITTED, f"Dagster run {run_id} {verb}: {url}")
        log.info("Task %s: Dagster run %s %s", objects.name_of(task), run_id, verb)
        return None

    # --- pooled runs (crd_bridge.pools) -----------------------------------------------------------

    def _burst(self, namespace: str, workspace: str) -> bool:
        """Whether Tasks of this WorkspaceConfig arrive together: a pool gathers them, or enough wait."""
        if self.pools.bursting((namespace, workspace)):
            return True
        waiting = sum(1 for t in self.in_workspace(namespace, workspace) if is_waiting(t) and not pool_of(t))
        return waiting >= self.pools.policy.min_waiting

    def _gather(self, group: Key) -> list[Obj]:
        """The waiting Tasks of ``group`` once they stop coming: after a window without a new one, at
        ``max_tasks``, or after ``max_gather`` seconds of gathering. A burst that goes on slowly (its last
        pool launched less than ``linger`` seconds ago, too few arrive together) is waited for until
        ``min_waiting`` Tasks wait, for at most ``linger`` seconds."""
        policy = self.pools.policy
        trickle = self.pools.lingering(group) and not self.pools.surging(group)
        deadline = policy.linger if trickle else policy.max_gather
        started, count = self.clock(), -1
        while True:
            self.pools.sleep(max(policy.window, TRICKLE_LOOK_SECONDS) if trickle else policy.window)
            members = [t for t in self.waiting(*group) if not pool_of(t) and not self.pools.busy(t)]
            if len(members) >= policy.max_tasks or self.clock() - started >= deadline:
                return members[: policy.max_tasks]
            if trickle and len(members) < policy.min_waiting:
                continue
            if len(members) <= count:  # none arrived in the last window
                return members
            count = len(members)

    def _pool(self, task: Obj, group: Key) -> float | None:
        """Gather the waiting Tasks of ``group`` for a moment, then launch one run for all of them. A worker
        that finds a pool already gathering leaves its Task to it."""
        if not self.pools.open(group):
            return None
        claimed: list[Obj] = []
        members: list[Obj] = []
        dagster_away = handed_over = False
        try:
            members = self._gather(group)
            if members:
                submitted = self.pools.with_runs(group[0], members)
                for t in (t for t in members if objects.uid_of(t) in submitted):
                    with self.pools.holding(t):
                        self._submit(t)  # finds its own run by its tags and records it
                members = [t for t in members if objects.uid_of(t) not in submitted]
            if not members:
                return None
            if len(members) == 1:
                with self.pools.holding(members[0]):
                    return self._submit(members[0])
            pool = self.pools.new_id()
            claimed = self.pools.claim(members, pool)
            for t in claimed:
                self.store.put(t)
            self._hand_over(group)  # the next pool gathers while this one launches
            handed_over = True
            if not claimed:
                return None
            try:
                run_id = self.pools.launch(group[0], pool, claimed)
            except DagsterRejected as e:
                metrics.SUBMISSION_ERRORS.labels("rejected").inc()
                message = f"Dagster refused to run job {contract.POOL_JOB}: {e}"
                self.pools.each(claimed, lambda t: self._fail_unsubmitted(t, vocabulary.RUN_SUBMISSION_FAILED, message))
                return None
            metrics.SUBMISSIONS.inc()
            self._remember_runs({run_id: RunInfo(run_id, SUBMITTED_RUN_STATUS)})
            log.info("pooled %d Tasks of %s/%s in Dagster run %s (pool %s)", len(claimed), *group, run_id, pool)
            self.pools.each(claimed, lambda t: self._record_run(t, run_id, pooled_with=len(claimed)))
            return None
        except DagsterUnavailable as e:
            # every member waits for Dagster, not only the Task this worker was given; the periodic pass
            # retries them (a claim without a run is recovered then: its run is found, or it is dropped)
            dagster_away = True
            error: Exception = e
            self.pools.each(members, lambda t: self._note_unavailable(self.store.get(objects.key_of(t)) or t, error))
            raise
        finally:
            self.pools.release(claimed)
            if not handed_over:
                self._hand_over(group, enqueue=not dagster_away)

    def _hand_over(self, group: Key, *, enqueue: bool = True) -> None:
        """Stop gathering for ``group`` and give what this pool left (it was full, a claim lost a race, or
        they came after it) to the next decision."""
        self.pools.close(group)
        if enqueue:
            for t in self.waiting(*group):
                if not pool_of(t):
                    self.enqueue(objects.key_of(t))

    def _recover_claim(self, task: Obj) -> float | None:
        """A claimed Task without a run: record its pool's run, or drop the claim of a pool never launched."""
        if self.pools.busy(task):
            return None  # its pool is being launched by this process
        pool = pool_of(task) or ""
        ns, _ = objects.key_of(task)
        found = self.pools.find_run(ns, pool)
        if found is not None:
            metrics.ADOPTED.inc()
            log.info(
                "Task %s: found its pool's run %s (%s); not submitting again",
                objects.name_of(task),
                found.run_id,
                found.status,
            )
            self._record_run(task, found.run_id, found=True)
            return None
        log.info("Task %s: pool %s was never launched; submitting the Task anew", objects.name_of(task), pool)
        self.store.put(self.pools.unclaim(task))  # its watch event brings it back, unclaimed
        return None

    def _record_run(self, task: Obj, run_id: str, *, found: bool = False, pooled_with: int = 0) -> None:
        """Write a pooled Task's run to its status (and say so in an Event); a Task whose step moved on
        first keeps its phase."""
        url = run_url_of_step(self.run_url(run_id), task)
        for _ in range(self.MAX_CONFLICTS):
            try:
                task = self._patch(task, self._run_recorded(task, run_id, url))
                break
            except Conflict:
                fresh = self._fetch(objects.key_of(task))
                if fresh is None or pool_of(fresh) != pool_of(task):
                    return
                task = fresh
        else:
            return
        with_others = f" (pooled with {pooled_with - 1} other Tasks)" if pooled_with > 1 else ""
        verb = "found" if found else "submitted"
        self._event(task, vocabulary.RUN_SUBMITTED, f"Dagster run {run_id} {verb}{with_others}: {url}")

    def _run_recorded(self, task: Obj, run_id: str, url: str) -> dict[str, Any]:
        """The status patch that records a Task's run: Pending with the run, or, when the run already moved
        the Task on (e.g. Running), only the run's id and URL."""
        if objects.phase_of(task) in (None, PENDING, QUEUED):
            return task_status.submitted(
                objects.status(task),
                run_id=run_id,
                run_url=url,
                generation=objects.generation_of(task),
                now=self._now(),
            )
        return {"dagsterRunId": run_id, "dagsterRunUrl": url}

    def _fail_unsubmitted(self, task: Obj, reason: str, message: str) -> None:
        """End a Task that gets no run: Failed with ``reason``, a warning Event, a log line."""
        self._patch(task, task_status.failed(objects.status(task), reason=reason, message=message, now=self._now()))
        self._event(task, reason, message, warning=True)
        log.warning("Task %s: %s", objects.name_of(task), message)

    def _note_unavailable(self, task: Obj, error: Exception) -> None:
        """Say on the Task why it has no run yet (once; the message does not change per attempt)."""
        reason = vocabulary.DAGSTER_UNAVAILABLE
        if (objects.condition(task, vocabulary.READY) or {}).get("reason") == reason:
            return
        message = "Dagster is unreachable; the Task is submitted when it is back"
        conditions = task_status.set_condition(
            objects.status(task).get("conditions"),
            vocabulary.READY,
            "False",
            reason,
            message,
            self._now(),
            objects.generation_of(task),
        )
        patch: dict[str, Any] = {"conditions": conditions, "message": message}
        if objects.phase_of(task) is None:
            patch["phase"] = PENDING
        try:
            self._patch(task, patch)
            self._event(task, reason, f"{message} ({error})", warning=True)
        except Exception as e:  # noqa: BLE001 - the retry matters more than this note
            log.debug("Task %s: could not note Dagster's absence: %s", objects.name_of(task), e)

    # --- stop ----------------------------------------------------------------------------------

    def _stop(self, task: Obj, run_id: str | None) -> float | None:
        if run_id is not None:
            with self._lock:  # a stop changes the run: follow it on fresh reads
                self._runs_read.pop(run_id, None)
        if run_id is not None and pool_of(task):
            self._announce_stop(task, run_id, f"stop requested: its step in Dagster run {run_id} stops it")
            return self._follow(task, run_id)
        if run_id is None and self.pools.busy(task):
            return 0.5  # its pool is being launched: the step will see the annotation
        if run_id is not None:
            self._request_stop(task, run_id)
            # The run's ops record Stopped; if the run ends without doing so, _follow writes it.
            return self._follow(task, run_id)
        # No run recorded; one may exist if the bridge stopped between submitting and writing status.
        try:
            for run in self.dagster.find_runs(contract.identity_tags(task, vocabulary.KIND_TASK)):
                if not run.finished:
                    self._terminate(task, run.run_id, "stop")
        except DagsterUnavailable as e:
            log.warning("Task %s: stopping without checking Dagster for a run (%s)", objects.name_of(task), e)
        message = f"stopped on request ({vocabulary.STOP}) before its run started"
        self._patch(
            task,
            task_status.stopped(
                objects.status(task), reason=vocabulary.STOP_REQUESTED, message=message, now=self._now()
            ),
        )
        self._event(task, vocabulary.STOP_REQUESTED, message)
        log.info("Task %s: %s", objects.name_of(task), message)
        return None

    # --- following a run -----------------------------------------------------------------------

    def _follow(self, task: Obj, run_id: str) -> float | None:
        """Drift check: a finished run whose Task is not terminal gets its terminal status after a grace."""
        try:
            run: RunInfo | None = self._recent_run(run_id)
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
        return self._settle(objects.key_of(task), run_id, run)

    def _recent_run(self, run_id: str) -> RunInfo:
        """A run as read at most RUN_READ_MAX_AGE seconds ago: the status writes of a Task (of all the Tasks
        of a pooled run) come in quick succession, and one read serves them all."""
        now = self.clock()
        with self._lock:
            read_at, run = self._runs_read.get(run_id, (float("-inf"), None))
        if run is not None and now - read_at <= RUN_READ_MAX_AGE:
            return run
        run = self.dagster.get_run(run_id)
        self._remember_runs({run_id: run})
        return run

    def _remember_runs(self, runs: Mapping[str, RunInfo]) -> None:
        now = self.clock()
        with self._lock:
            for run_id, run in runs.items():
                self._runs_read[run_id] = (now, run)
            for stale in [k for k, (at, _) in self._runs_read.items() if now - at > 60 * RUN_READ_MAX_AGE]:
                del self._runs_read[stale]

    def _successor_run(self, task: Obj, run_id: str) -> RunInfo | None:
        """An active run of the same Task other than ``run_id`` (a re-execution from Dagster's UI)."""
        for run in self.dagster.find_runs({vocabulary.TAG_UID: objects.uid_of(task)}):
            if run.run_id != run_id and not run.finished:
                return run  # type: ignore[no-any-return]
        return None

    def _adopt(self, task: Obj, run: RunInfo) -> float | None:
        url = self.run_url(run.run_id)
        self._patch(task, {"dagsterRunId": run.run_id, "dagsterRunUrl": url})
        self._event(task, vocabulary.RUN_ADOPTED, f"following Dagster run {run.run_id} (started from Dagster): {url}")
        return None

    def _settle(self, key: Key, run_id: str, run: RunInfo | None) -> float | None:
        """Write the terminal status a finished (or missing) run did not write, on a fresh read."""
        fresh = self._fetch(key)
        if fresh is None:
            self.store.remove(key)
            return None
        self.store.put(fresh)
        if executed_elsewhere(fresh) or is_terminal(fresh) or objects.run_id_of(fresh) != run_id:
            return None  # the run's own write won, or something else took over
        job = objects.status(fresh).get("jobName")
        if run is None:
            phase, reason = FAILED, vocabulary.RUN_NOT_FOUND
            message = f"Dagster has no run {run_id} (was the Dagster instance reset?)"
        elif run.status == "CANCELED":
            phase, reason = STOPPED, vocabulary.RUN_CANCELED
            message = f"Dagster run {run_id} was canceled"
        elif objects.phase_of(fresh) == RUNNING and job and not self.kube.job_exists(key[0], job):
            phase, reason = FAILED, vocabulary.JOB_DELETED
            message = f"Job {job} was deleted and Dagster run {run_id} ended ({run.status})"
        elif run.status == "FAILURE":
            phase, reason = FAILED, vocabulary.RUN_FAILED
            try:  # a pooled run's failure message is one of its other Tasks'
                detail = None if pool_of(fresh) else self.dagster.failure_message(run_id)
            except DagsterError as e:
                detail = None
                log.info("Task %s: no failure message for run %s: %s", objects.name_of(fresh), run_id, e)
            message = f"Dagster run {run_id} failed" + (
                f": {detail}" if detail else " without recording the Task's outcome"
            )
        else:
            phase, reason = FAILED, vocabulary.RUN_ENDED_WITHOUT_STATUS
            message = f"Dagster run {run_id} ended ({run.status}) without recording the Task's outcome"
        builder = task_status.stopped if phase == STOPPED else task_status.failed
        self._patch(fresh, builder(objects.status(fresh), reason=reason, message=message, now=self._now()))
        self._event(fresh, reason, message, warning=phase == FAILED)
        metrics.DRIFT_CORRECTIONS.labels(reason).inc()
        log.warning("Task %s: %s -> %s (%s)", objects.name_of(fresh), message, phase, reason)
        with self._lock:
            self._ended.pop(run_id, None)
        return None

    # --- periodic work -------------------------------------------------------------------------

    def periodic(self) -> None:
        """One pass: gauges; Tasks whose run finished or vanished; waiting Tasks that may get a slot or
        retry a submission; stop requests to repeat. Only enqueues: the workers do the work. Keys
        waiting for a backoff retry are skipped, except right after Dagster came back."""
        tasks = self.store.snapshot()
        phases = self._count_phases(tasks, [p.value for p in TaskPhase], metrics.TASKS)
        metrics.QUEUED.set(phases.get(QUEUED, 0))
        recovered = self._dagster_recovered(any(is_waiting(t) for t in tasks))
        enqueue = self.enqueue if recovered else self._enqueue_unless_backing_off

        ours = [t for t in tasks if not executed_elsewhere(t) and not is_terminal(t)]
        with_run = [t for t in ours if objects.run_id_of(t)]
        if with_run:
            try:
                runs: dict[str, RunInfo] | None = self.dagster.get_runs(objects.run_id_of(t) for t in with_run)
                self._remember_runs(runs or {})
            except DagsterError as e:
                log.debug("periodic pass: no run statuses from Dagster: %s", e)
                runs = None
            for t in with_run:
                if stop_requested(t) or objects.being_deleted(t):
                    enqueue(objects.key_of(t))
                elif runs is not None:
                    run = runs.get(objects.run_id_of(t) or "")
                    if run is None or run.finished:
                        enqueue(objects.key_of(t))

        groups: dict[Key, list[Obj]] = {}
        for t in ours:
            if objects.run_id_of(t) is None:
                if stop_requested(t) or objects.being_deleted(t):
                    enqueue(objects.key_of(t))
                elif is_waiting(t):
                    groups.setdefault((objects.key_of(t)[0], workspace_of(t)), []).append(t)
        for (ns, ws), members in groups.items():
            known, limit = self.limits.cached(ns, ws)
            members.sort(key=objects.fifo_key)
            free = len(members) if not known or limit is None else max(1, limit - self.active_count(ns, ws))
            for i, t in enumerate(members):
                if i < free or objects.phase_of(t) != QUEUED:
                    enqueue(objects.key_of(t))

        with self._lock:
            deleted = list(self._deleted)
        for key in deleted:  # runs of deleted Tasks still to terminate (Dagster was away)
            enqueue(key)
        self._prune()

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

    def relist(self, listed_since: float) -> list[Obj]:
        """Repair the caches of Tasks and WorkspaceConfigs from full lists (taken after ``listed_since``)."""
        items = super().relist(listed_since)
        for key in self.limits.replace(self.kube.list(WORKSPACE_CONFIGS, self.namespaces)):
            self.release(*key)
        return items

    def _handle_deleted(self, obj: Obj) -> float | None:
        if pool_of(obj) and objects.run_id_of(obj):
            return None  # its step in the pooled run sees the deletion; the run's other Tasks go on
        return super()._handle_deleted(obj)
