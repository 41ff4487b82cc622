"""Pooled runs: standalone Tasks that arrive together share one Dagster run (``pool_job``), a step each.

A Dagster run has a fixed cost (queue, run worker, planning, a dozen event rows) that a burst of Tasks
would otherwise pay once per Task. When at least ``PoolPolicy.min_waiting`` Tasks of one WorkspaceConfig
(without a bridge-side limit) wait for a run, the worker that sees it gathers them while they keep
coming (until ``window`` seconds pass without a new one, ``max_tasks`` wait or ``max_gather`` seconds
passed), then claims up to ``max_tasks`` of them and launches one run for all. A Task that arrives alone goes
on running in a ``task_job`` of its own, as before.

Crash safety, in three writes: (1) each Task is claimed with the pool's id in its ``kubetask.io/pool``
label (guarded by its resourceVersion); (2) the run is launched with the same id in its
``kubetask.io/pool`` tag; (3) each Task's status records the run. A bridge that dies after (1) finds
on restart a claimed Task without a run: it looks the pool's run up by its tag and records it, or, when
there is none, removes the claim and the Task is pooled (or run alone) anew. The step of a pool runs its
Task only while the Task still carries its pool's id, so a run that shows up late runs nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kubetask import objects, vocabulary
from kubetask.domain import runs as contract
from kubetask.objects import Key, Obj

from .kube import TASKS, Conflict, Gone, KubeApi

log = logging.getLogger(__name__)

CLAIM_WORKERS = 8
CLOCK_SKEW_SECONDS = 300.0  # between the API server's creation timestamps and Dagster's run creation times


@dataclass(frozen=True)
class PoolPolicy:
    """When standalone Tasks share a run."""

    max_tasks: int = 200
    """The most Tasks in one pooled run (1: never pool)."""
    window: float = 0.25
    """A pool stops gathering once this many seconds passed without a new Task."""
    max_gather: float = 1.0
    """The most seconds a pool gathers while Tasks keep coming. A burst applied over a few seconds then
    makes a few large pools rather than many small ones: each pool is a run worker (~60 MB of its own,
    a run's fixed cost in CPU), each Task of it only a thread."""
    linger: float = 5.0
    """Seconds a burst is taken to go on after its last pool stopped gathering. A Task that arrives
    meanwhile, while fewer than ``min_waiting`` arrive together, waits up to this long for that many to
    share the next pool instead of taking a run of its own: under load a burst's Tasks arrive slowly
    (``kubectl apply`` waits on a busy API server), and a run each made that load worse."""
    min_waiting: int = 8
    """A pool opens when at least this many Tasks of one WorkspaceConfig wait for a run, or arrived
    within the last ``max_gather`` seconds. Below it a run each costs little and starts sooner (no
    gathering window), and a Task keeps a run of its own."""

    @property
    def enabled(self) -> bool:
        return self.max_tasks > 1


def pool_of(obj: Mapping[str, Any]) -> str | None:
    """The id of the pool that claimed this Task, if any."""
    return objects.labels_of(obj).get(vocabulary.LABEL_POOL) or None


def run_url_of_step(run_url: str, obj: Mapping[str, Any]) -> str:
    """``status.dagsterRunUrl`` of a pooled Task: its run, opened on its own step."""
    ns, name = objects.key_of(obj)
    return contract.step_url(run_url, contract.pool_step_key(name, objects.uid_of(obj)))


class TaskPools:
    """The pools being gathered and launched by this bridge (thread-safe)."""

    def __init__(
        self,
        kube: KubeApi,
        dagster: Any,
        policy: PoolPolicy,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.kube = kube
        self.dagster = dagster
        self.policy = policy
        self.sleep = sleep
        self.clock = clock
        self._closed_at: dict[Key, float] = {}  # when each group's last pool stopped gathering
        self._arrivals: dict[Key, deque[float]] = {}  # when each group's recent new Tasks were seen
        self._lock = threading.Lock()
        self._gathering: set[Key] = set()  # (namespace, WorkspaceConfig) with a pool being gathered
        self._in_flight: set[str] = set()  # uids this process is submitting or pooling, not yet recorded

    def busy(self, obj: Mapping[str, Any]) -> bool:
        """Whether this process is submitting or pooling this Task right now."""
        with self._lock:
            return objects.uid_of(obj) in self._in_flight

    @contextmanager
    def holding(self, obj: Mapping[str, Any]) -> Iterator[None]:
        """Mark a Task as being submitted alone, so that no pool claims it meanwhile."""
        uid = objects.uid_of(obj)
        with self._lock:
            self._in_flight.add(uid)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight.discard(uid)

    def with_runs(self, namespace: str, tasks: Sequence[Obj]) -> set[str]:
        """The uids among ``tasks`` that already have a run of their own (a bridge that died between
        submitting it and writing the status): one query for the namespace's Task runs created since the
        oldest of them (every earlier run of the namespace would otherwise come back with each pool)."""
        uids = {objects.uid_of(t) for t in tasks}
        tags = {vocabulary.TAG_KIND: vocabulary.KIND_TASK, vocabulary.TAG_NAMESPACE: namespace}
        created = [c for c in (objects.created_at(t) for t in tasks) if c is not None]
        since = min(created) - CLOCK_SKEW_SECONDS if len(created) == len(tasks) else None
        return {
            r.tags.get(vocabulary.TAG_UID) for r in self.dagster.find_runs(tags, limit=1000, created_after=since)
        } & uids

    def arrived(self, group: Key) -> None:
        """A new Task of ``group`` waits for a run."""
        now = self.clock()
        with self._lock:
            seen = self._arrivals.setdefault(group, deque())
            seen.append(now)
            self._forget_arrivals_before(seen, now - self.policy.max_gather)

    def bursting(self, group: Key) -> bool:
        """Whether ``group``'s Tasks come as a burst: a pool gathers them, ``min_waiting`` of them arrived
        within ``max_gather`` seconds, or a pool stopped gathering less than ``linger`` seconds ago. A burst applied
        while the API server is busy arrives over many seconds, a few Tasks at a time, each decided at
        once: counting only those waiting at one instant ran most of a 1,000-Task burst alone or in pools
        of two or three, a run worker each."""
        with self._lock:
            if group in self._gathering:
                return True
        return self.surging(group) or self.lingering(group)

    def surging(self, group: Key) -> bool:
        """Whether ``min_waiting`` Tasks of ``group`` arrived within the last ``max_gather`` seconds."""
        with self._lock:
            seen = self._arrivals.get(group) or deque()
            self._forget_arrivals_before(seen, self.clock() - self.policy.max_gather)
            return len(seen) >= self.policy.min_waiting

    @staticmethod
    def _forget_arrivals_before(seen: deque[float], cutoff: float) -> None:
        while seen and seen[0] <= cutoff:
            seen.popleft()

    def lingering(self, group: Key) -> bool:
        """Whether ``group``'s last pool stopped gathering less than ``linger`` seconds ago."""
        with self._lock:
            closed = self._closed_at.get(group)
        return closed is not None and self.clock() - closed < self.policy.linger

    def open(self, group: Key) -> bool:
        """Become the gatherer of ``group``'s pool; False when another worker already is."""
        with self._lock:
            if group in self._gathering:
                return False
            self._gathering.add(group)
            return True

    def close(self, group: Key) -> None:
        with self._lock:
            self._gathering.discard(group)
            self._closed_at[group] = self.clock()

    def claim(self, tasks: Sequence[Obj], pool: str) -> list[Obj]:
        """Label each Task with ``pool`` (on the version it was read at); the Tasks claimed, as written."""

        def one(task: Obj) -> Obj | None:
            ns, name = objects.key_of(task)
            try:
                return self.kube.patch_metadata(
                    TASKS,
                    ns,
                    name,
                    objects.meta(task).get("resourceVersion"),
                    {"labels": {vocabulary.LABEL_POOL: pool}},
                )
            except (Conflict, Gone):
                return None  # changed meanwhile (or deleted): decided again on its own

        with self._lock:
            self._in_flight.update(objects.uid_of(t) for t in tasks)
        with ThreadPoolExecutor(max_workers=CLAIM_WORKERS, thread_name_prefix="pool-claim") as pool_threads:
            claimed = [t for t in pool_threads.map(one, tasks) if t is not None]
        kept = {objects.uid_of(t) for t in claimed}
        self.release([t for t in tasks if objects.uid_of(t) not in kept])
        return claimed

    def release(self, tasks: Sequence[Mapping[str, Any]]) -> None:
        with self._lock:
            self._in_flight.difference_update(objects.uid_of(t) for t in tasks)

    def launch(self, namespace: str, pool: str, tasks: Sequence[Obj]) -> str:
        """Launch the pooled run of ``tasks`` (claimed for ``pool``); its run id."""
        return str(
            self.dagster.submit_run(
                contract.POOL_JOB,
                contract.pool_run_config(namespace, pool, tasks),
                contract.pool_tags(namespace, pool),
            )
        )

    def find_run(self, namespace: str, pool: str) -> Any:
        """The run launched for ``pool`` (a restart between the launch and the status writes), or None."""
        tags = {
            vocabulary.TAG_KIND: vocabulary.KIND_TASK_POOL,
            vocabulary.TAG_NAMESPACE: namespace,
            vocabulary.TAG_POOL: pool,
        }
        found = self.dagster.find_runs(tags)
        return found[0] if found else None

    def unclaim(self, task: Obj) -> Obj:
        """Remove a claim whose pool never got a run (guarded by the Task's version)."""
        ns, name = objects.key_of(task)
        return self.kube.patch_metadata(
            TASKS, ns, name, objects.meta(task).get("resourceVersion"), {"labels": {vocabulary.LABEL_POOL: None}}
        )

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:16]

    def each(self, tasks: Sequence[Obj], write: Callable[[Obj], None]) -> None:
        """Run ``write`` for every Task, a few at a time (a pool of 200 would otherwise wait 200 round
        trips). A write that fails for one Task (deleted meanwhile, the API server away) leaves the others
        done; that Task keeps its claim and is decided again on its own."""

        def one(task: Obj) -> None:
            try:
                write(task)
            except Exception as e:  # noqa: BLE001 - logged; the Task's next reconcile repairs it
                log.warning("Task %s/%s: %s", *objects.key_of(task), e or type(e).__name__)

        with ThreadPoolExecutor(max_workers=CLAIM_WORKERS, thread_name_prefix="pool-write") as pool_threads:
            list(pool_threads.map(one, tasks))
