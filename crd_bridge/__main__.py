"""``python -m crd_bridge``: the bridge process.

Threads and loops:

- the asyncio loop runs kopf (``kopf.operator``, standalone: no peering) with event handlers only, for
  Tasks, WorkspaceConfigs and BatchRuns: they update the caches and enqueue keys, nothing else. With only
  ``@kopf.on.event`` handlers kopf keeps no diff-base or progress annotations and adds no finalizers:
  the bridge never writes to a Task's metadata;
- ``workers`` threads take keys from the work queue and run ``Reconciler.reconcile_key``;
  ``batchrun_workers`` threads do the same for BatchRun keys (``BatchRunReconciler``, own queue);
- one thread loads the caches with a full list before the workers start (so queue counts are right
  from the first decision), then runs the periodic pass (drift check, queue re-check, retries), the
  orphan sweep and the re-list;
- one thread serves /healthz, /readyz and /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import kopf
import kubernetes

from kubetask.api import GROUP, VERSION

from . import metrics
from .batchruns import BatchRunReconciler, BatchRunStore, BatchTaskIndex, KubernetesBatchRunApi
from .batches import register_batches
from .config import BridgeConfig, parse_config
from .dagster_client import DagsterClient
from .tasks import KubernetesApi, Reconciler, TaskStore, WorkQueue, WorkspaceLimits

log = logging.getLogger("crd_bridge")


def load_kube_configuration(kubeconfig: str | None) -> kubernetes.client.Configuration:
    """--kubeconfig / $KUBECONFIG, else in-cluster (service account), else ~/.kube/config."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    else:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    return configuration


def connection_info(configuration: kubernetes.client.Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials from the same configuration the bridge's own client uses."""
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


class Runtime:
    """The bridge's parts wired together, with their threads."""

    def __init__(self, config: BridgeConfig, configuration: kubernetes.client.Configuration):
        self.config = config
        self.configuration = configuration
        self.health = metrics.Health()
        self.queue = WorkQueue()
        self.kube = KubernetesApi(kubernetes.client.ApiClient(configuration))
        metrics.DAGSTER_UP.set(0)
        self.dagster = DagsterClient(
            config.dagster_url,
            location=config.location,
            repository=config.repository,
            timeout=config.dagster_timeout,
            on_availability=lambda up: metrics.DAGSTER_UP.set(1 if up else 0),
        )
        self.store = TaskStore()
        self.limits = WorkspaceLimits(self.kube)
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
        )
        self.batch_queue = WorkQueue()
        self.batchruns = BatchRunReconciler(
            KubernetesBatchRunApi(kubernetes.client.ApiClient(configuration)),
            self.dagster,
            BatchRunStore(),
            BatchTaskIndex(),
            task_store=self.store,
            job=config.batch_job,
            run_url=config.run_url,
            grace=config.drift_grace,
            debounce=config.batchrun_debounce,
            namespaces=config.namespaces,
            enqueue=self.batch_queue.add_after,
        )
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: Any = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._server = metrics.serve(self.config.health_host, self.config.health_port, self.health)
        self.health.beat("periodic", self._periodic_max_age)
        self._spawn("bridge-main", self._main)

    def stop(self) -> None:
        self._stopping.set()
        self.queue.shutdown()
        self.batch_queue.shutdown()
        for thread in self._threads:
            thread.join(timeout=15)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def _periodic_max_age(self) -> float:
        # A pass may wait on a few Dagster timeouts; liveness fails only when the loop is stuck.
        return max(120.0, 10 * self.config.drift_interval, 6 * self.config.dagster_timeout)

    # --- threads -------------------------------------------------------------------------------

    def _main(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            self.health.beat("periodic", self._periodic_max_age)
            try:
                since = time.monotonic()
                self.reconciler.relist(since)
                self.batchruns.relist(since)  # after the Tasks: its Task index is built from their cache
                break
            except Exception as e:
                log.warning("initial list of Tasks and WorkspaceConfigs failed (%s); retrying in %.0f s", e, delay)
                self._stopping.wait(delay)
                delay = min(30.0, delay * 2)
        if self._stopping.is_set():
            return
        self.health.set("synced", True)
        log.info("cache loaded: %d Tasks, %d BatchRuns; starting %d workers (+%d for BatchRuns)", len(self.store),
                 len(self.batchruns.store), self.config.workers, self.config.batchrun_workers)
        for i in range(self.config.workers):
            self._spawn(f"bridge-worker-{i}", self._work)
        for i in range(self.config.batchrun_workers):
            self._spawn(f"bridge-batchrun-worker-{i}", self._work_batchruns)
        self._periodic()

    def _work(self) -> None:
        while not self._stopping.is_set():
            key = self.queue.get(timeout=1.0)
            metrics.WORK_QUEUE.set(len(self.queue))
            if key is None:
                continue
            try:
                delay = self.reconciler.reconcile_key(key)
            except BaseException:  # reconcile_key never raises; belt and braces for the thread's life
                log.exception("Task %s/%s: unexpected error in worker", *key)
                delay = 5.0
            finally:
                self.queue.done(key)
            if delay:
                self.queue.add_after(key, delay)

    def _work_batchruns(self) -> None:
        while not self._stopping.is_set():
            key = self.batch_queue.get(timeout=1.0)
            metrics.BATCHRUN_WORK_QUEUE.set(len(self.batch_queue))
            if key is None:
                continue
            try:
                delay = self.batchruns.reconcile_key(key)
            except BaseException:  # reconcile_key never raises; belt and braces for the thread's life
                log.exception("BatchRun %s/%s: unexpected error in worker", *key)
                delay = 5.0
            finally:
                self.batch_queue.done(key)
            if delay:
                self.batch_queue.add_after(key, delay)

    def _periodic(self) -> None:
        cfg = self.config
        next_orphans = time.monotonic()  # once at start-up: runs of Tasks deleted while the bridge was away
        next_relist = time.monotonic() + cfg.relist_interval
        while not self._stopping.wait(cfg.drift_interval):
            self.health.beat("periodic", self._periodic_max_age)
            now = time.monotonic()
            try:
                self.reconciler.periodic()
            except Exception:
                metrics.RECONCILE_ERRORS.inc()
                log.exception("periodic pass failed")
            try:
                self.batchruns.periodic()
            except Exception:
                metrics.RECONCILE_ERRORS.inc()
                log.exception("periodic pass over BatchRuns failed")
            if now >= next_orphans:
                next_orphans = now + cfg.orphan_interval
                try:
                    self.reconciler.sweep_orphans()
                except Exception as e:
                    log.info("orphan sweep skipped: %s", e)
                try:
                    self.batchruns.sweep_orphans()
                except Exception as e:
                    log.info("orphan sweep of BatchRun runs skipped: %s", e)
            if now >= next_relist:
                next_relist = now + cfg.relist_interval
                try:
                    since = time.monotonic()
                    self.reconciler.relist(since)
                    self.batchruns.relist(since)
                except Exception as e:
                    log.warning("re-list failed: %s", e)

    # --- kopf ----------------------------------------------------------------------------------

    def registry(self) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()
        reconciler = self.reconciler
        batchruns = self.batchruns
        configuration = self.configuration

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return connection_info(configuration)

        @kopf.on.event(GROUP, VERSION, "tasks", id="tasks", registry=registry)
        async def task_event(event: dict[str, Any], **_: Any) -> None:
            obj = event.get("object") or {}
            try:
                reconciler.observe(event.get("type"), obj)
            except Exception:
                meta = obj.get("metadata") or {}
                log.exception("Task %s/%s: event not handled", meta.get("namespace"), meta.get("name"))
            try:
                batchruns.observe_task(event.get("type"), obj)  # after observe: indexes the cache's version
            except Exception:
                meta = obj.get("metadata") or {}
                log.exception("Task %s/%s: event not indexed for its BatchRun", meta.get("namespace"), meta.get("name"))

        @kopf.on.event(GROUP, VERSION, "batchruns", id="batchruns", registry=registry)
        async def batchrun_event(event: dict[str, Any], **_: Any) -> None:
            obj = event.get("object") or {}
            try:
                batchruns.observe(event.get("type"), obj)
            except Exception:
                meta = obj.get("metadata") or {}
                log.exception("BatchRun %s/%s: event not handled", meta.get("namespace"), meta.get("name"))

        @kopf.on.event(GROUP, VERSION, "workspaceconfigs", id="workspaceconfigs", registry=registry)
        async def workspace_event(event: dict[str, Any], **_: Any) -> None:
            obj = event.get("object") or {}
            try:
                reconciler.observe_workspace(event.get("type"), obj)
            except Exception:
                meta = obj.get("metadata") or {}
                log.exception("WorkspaceConfig %s/%s: event not handled", meta.get("namespace"), meta.get("name"))

        register_batches(registry, self)  # Batches: code-location reload, schedule on/off, Batch status
        return registry

    def settings(self) -> kopf.OperatorSettings:
        settings = kopf.OperatorSettings()
        settings.posting.enabled = False  # the bridge records its own Events
        settings.watching.server_timeout = 300  # re-open watches now and then
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 60
        return settings

    async def operate(self) -> None:
        ready = asyncio.Event()

        async def heartbeat() -> None:
            while True:
                self.health.beat("event-loop", 30.0)
                if ready.is_set():
                    self.health.set("watching", True)
                await asyncio.sleep(2.0)

        beating = asyncio.create_task(heartbeat())
        self.health.set("operator", True)
        try:
            await kopf.operator(
                registry=self.registry(),
                settings=self.settings(),
                standalone=True,
                clusterwide=not self.config.namespaces,
                namespaces=list(self.config.namespaces),
                ready_flag=ready,
            )
        finally:
            self.health.set("operator", False)
            beating.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(
        level=getattr(logging, config.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if config.log_level != "DEBUG":  # kopf logs every handled event at INFO
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        configuration = load_kube_configuration(config.kubeconfig)
    except Exception as e:
        log.error("no Kubernetes configuration: %s", e)
        return 2
    log.info(
        "crd_bridge: API server %s, namespaces %s, Dagster %s (location %s, repository %s, job %s)",
        configuration.host, ",".join(config.namespaces) or "(all)", config.dagster_url, config.location, config.repository, config.job,
    )
    # --- leader election (crd_bridge.leader): start the bridge only while this process holds the Lease ---
    elector = None
    if config.leader_elect:
        from . import leader

        elector = leader.wait_for_leadership(config, configuration)
        if elector is None:
            return 0
    # ---
    runtime = Runtime(config, configuration)
    runtime.start()
    try:
        asyncio.run(runtime.operate())
    except KeyboardInterrupt:
        pass
    finally:
        runtime.stop()
        if elector is not None:
            elector.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
