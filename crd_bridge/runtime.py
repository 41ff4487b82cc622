"""The bridge's parts wired together, with their threads.

- ``workers`` threads take Task keys from one work queue and run ``Reconciler.reconcile_key``;
  ``batchrun_workers`` threads do the same for BatchRun keys (``BatchRunReconciler``, own queue): one
  worker loop, ``Runtime._work``, serves both;
- one thread loads the caches with a full list before the workers start (so queue counts are right
  from the first decision), then runs the periodic pass (drift check, queue re-check, retries), the
  orphan sweep and the re-list of both reconcilers;
- one thread serves /healthz, /readyz and /metrics;
- the Batch sync runs on its own thread once kopf starts (``watch``), until ``stopping`` is set.

The kopf side (event handlers, the operator's event loop) is in ``watch``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import kubernetes

from . import batchruns, metrics, tasks
from .batches import BatchSync
from .batchruns import BatchRunReconciler
from .cache import ObjectStore, WorkQueue, WorkspaceLimits, decided_fields
from .config import BridgeConfig
from .dagster.client import DagsterClient
from .kube import KubernetesApi
from .pools import PoolPolicy
from .reconcile import ReconcileLoop
from .tasks import Reconciler
from .tenancy import TenantGate
from .workspaces import TaskTimings, WorkspaceCounts

log = logging.getLogger("crd_bridge")


class Runtime:
    """The bridge's parts wired together, with their threads."""

    def __init__(self, config: BridgeConfig, configuration: kubernetes.client.Configuration):
        self.config = config
        self.configuration = configuration
        self.health = metrics.Health()
        self.stopping = threading.Event()
        """Set by ``stop``: every loop of the bridge ends."""
        self.kube = KubernetesApi(kubernetes.client.ApiClient(configuration))
        metrics.DAGSTER_UP.set(0)
        self.dagster = DagsterClient(
            config.dagster_url,
            location=config.location,
            repository=config.repository,
            timeout=config.dagster_timeout,
            on_availability=lambda up: metrics.DAGSTER_UP.set(1 if up else 0),
        )
        self.store = ObjectStore(
            {tasks.BY_WORKSPACE: tasks.workspace_index, batchruns.BY_BATCHRUN: batchruns.batchrun_index},
            trim=decided_fields,
        )
        """The Task cache, shared by both reconcilers."""
        self.store.subscribe(TaskTimings())
        self.limits = WorkspaceLimits(self.kube)
        tenancy = TenantGate(self.kube, config.run_worker)
        self.queue = WorkQueue()
        self.reconciler = Reconciler(
            self.kube,
            self.dagster,
            self.store,
            self.limits,
            job=config.job,
            run_url=config.run_url,
            grace=config.drift_grace,
            namespaces=config.namespaces,
            enqueue=self.queue.add_after,
            tenancy=tenancy,
            pooling=PoolPolicy(
                max_tasks=config.pool_max_tasks,
                window=config.pool_window,
                max_gather=config.pool_max_gather,
                linger=config.pool_linger,
                min_waiting=config.pool_min_waiting,
            ),
        )
        self.batch_queue = WorkQueue()
        self.batchruns = BatchRunReconciler(
            self.kube,
            self.dagster,
            ObjectStore(trim=decided_fields),
            self.store,
            job=config.batch_job,
            run_url=config.run_url,
            grace=config.drift_grace,
            debounce=config.batchrun_debounce,
            namespaces=config.namespaces,
            enqueue=self.batch_queue.add_after,
            tenancy=tenancy,
        )
        self.batch_sync = BatchSync(self.dagster, self.kube)
        self.workspace_counts = WorkspaceCounts(self.kube, self.store, self.limits)
        self._threads: list[threading.Thread] = []
        self._server: Any = None

    @property
    def reconcilers(self) -> tuple[ReconcileLoop, ...]:
        """Tasks first: the BatchRuns' Task index is the Task cache."""
        return self.reconciler, self.batchruns

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._server = metrics.serve(self.config.health_host, self.config.health_port, self.health)
        self.health.beat("periodic", self._periodic_max_age)
        self._spawn("bridge-main", self._main)

    def stop(self) -> None:
        self.stopping.set()
        self.queue.shutdown()
        self.batch_queue.shutdown()
        for thread in self._threads:
            thread.join(timeout=15)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def _periodic_max_age(self) -> float:
        # A pass may wait on a few Dagster timeouts; liveness fails only when the loop is stuck.
        return max(120.0, 10 * self.config.drift_interval, 6 * self.config.dagster_timeout)

    # --- threads -------------------------------------------------------------------------------

    def _relist(self) -> None:
        since = time.monotonic()
        for reconciler in self.reconcilers:
            reconciler.relist(since)

    def _main(self) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            self.health.beat("periodic", self._periodic_max_age)
            try:
                self._relist()
                break
            except Exception as e:  # noqa: BLE001 - the API server may not answer yet: retry
                log.warning("initial list of Tasks and WorkspaceConfigs failed (%s); retrying in %.0f s", e, delay)
                self.stopping.wait(delay)
                delay = min(30.0, delay * 2)
        if self.stopping.is_set():
            return
        self.health.set("synced", True)
        cfg = self.config
        log.info(
            "cache loaded: %d Tasks, %d BatchRuns; starting %d workers (+%d for BatchRuns)",
            len(self.store),
            len(self.batchruns.store),
            cfg.workers,
            cfg.batchrun_workers,
        )
        for i in range(cfg.workers):
            self._spawn(f"bridge-worker-{i}", lambda: self._work(self.queue, self.reconciler, metrics.WORK_QUEUE))
        for i in range(cfg.batchrun_workers):
            self._spawn(
                f"bridge-batchrun-worker-{i}",
                lambda: self._work(self.batch_queue, self.batchruns, metrics.BATCHRUN_WORK_QUEUE),
            )
        self._periodic()

    def _work(self, queue: WorkQueue, reconciler: ReconcileLoop, length: Any) -> None:
        """Take keys from ``queue`` and reconcile them, one worker per key at a time, until stopped."""
        while not self.stopping.is_set():
            key = queue.get(timeout=1.0)
            length.set(len(queue))
            if key is None:
                continue
            try:
                delay = reconciler.reconcile_key(key)
            except BaseException:  # reconcile_key never raises; belt and braces for the thread's life
                log.exception("%s %s/%s: unexpected error in worker", reconciler.kind, *key)
                delay = 5.0
            finally:
                queue.done(key)
            if delay:
                queue.add_after(key, delay)

    def _periodic(self) -> None:
        cfg = self.config
        next_orphans = time.monotonic()  # once at start-up: runs of objects deleted while the bridge was away
        next_relist = time.monotonic() + cfg.relist_interval
        while not self.stopping.wait(cfg.drift_interval):
            self.health.beat("periodic", self._periodic_max_age)
            now = time.monotonic()
            for reconciler in self.reconcilers:
                try:
                    reconciler.periodic()
                except Exception:
                    metrics.RECONCILE_ERRORS.inc()
                    log.exception("periodic pass over %ss failed", reconciler.kind)
            try:
                self.workspace_counts.periodic()
            except Exception as e:  # noqa: BLE001 - the next pass writes them
                log.warning("WorkspaceConfig counts not written: %s", e)
            if now >= next_orphans:
                next_orphans = now + cfg.orphan_interval
                for reconciler in self.reconcilers:
                    try:
                        reconciler.sweep_orphans()
                    except Exception as e:  # noqa: BLE001 - Dagster may be away: the next sweep tries again
                        log.info("orphan sweep of %s runs skipped: %s", reconciler.kind, e)
            if now >= next_relist:
                next_relist = now + cfg.relist_interval
                try:
                    self._relist()
                except Exception as e:  # noqa: BLE001 - the next re-list tries again
                    log.warning("re-list failed: %s", e)
