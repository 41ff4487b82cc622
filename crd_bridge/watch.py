"""Every kopf handler of the bridge, and the operator's event loop.

kopf runs standalone (no peering) with event handlers only, for Tasks, WorkspaceConfigs, BatchRuns
and Batches: they update the caches and enqueue keys (or record what changed for the Batch sync),
nothing else. With only ``@kopf.on.event`` handlers kopf keeps no diff-base or progress annotations
and adds no finalizers: the bridge never writes to an object's metadata through kopf. Each handler
catches its own errors, so one bad object never stops the watch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import kopf
import kubernetes

from kubetask import objects, vocabulary
from kubetask.api import GROUP, VERSION

from .kube import BATCHES, BATCHRUNS, TASKS, WORKSPACE_CONFIGS
from .runtime import Runtime

log = logging.getLogger("crd_bridge")


def connection_info(configuration: kubernetes.client.Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials from the same configuration the bridge's own client uses."""
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
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


Observer = Callable[[str | None, dict[str, Any]], None]


def _on_event(registry: kopf.OperatorRegistry, plural: str, id: str, observe: Observer, what: str) -> None:
    """Hand every watch event of ``plural`` to ``observe``; log (never raise) what it could not handle
    (``what``: the kind, for the log)."""

    @kopf.on.event(GROUP, VERSION, plural, id=id, registry=registry)
    async def handler(event: Mapping[str, Any], **_: Any) -> None:
        obj = event.get("object") or {}
        try:
            observe(event.get("type"), obj)
        except Exception:
            log.exception("%s %s: event not handled", what, objects.name_of(obj))


def registry(runtime: Runtime) -> kopf.OperatorRegistry:
    """The bridge's handlers: Tasks, BatchRuns and WorkspaceConfigs for the reconcilers; Batches and
    BatchRuns for the Batch sync (code-location reload, schedule on/off, Batch status)."""
    reg = kopf.OperatorRegistry()
    configuration = runtime.configuration
    sync = runtime.batch_sync

    @kopf.on.login(registry=reg)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(configuration)

    # The Task cache also indexes the BatchRuns' Tasks: the BatchRuns hear of a Task through it.
    _on_event(reg, TASKS, "tasks", runtime.reconciler.observe, vocabulary.KIND_TASK)
    _on_event(reg, BATCHRUNS, "batchruns", runtime.batchruns.observe, vocabulary.KIND_BATCHRUN)
    _on_event(
        reg,
        WORKSPACE_CONFIGS,
        "workspaceconfigs",
        runtime.reconciler.observe_workspace,
        vocabulary.KIND_WORKSPACE_CONFIG,
    )
    _on_event(reg, BATCHES, "batch-catalog", sync.observe, f"{vocabulary.KIND_BATCH} (catalog)")
    _on_event(reg, BATCHRUNS, "batch-status", sync.observe_batchrun, f"{vocabulary.KIND_BATCHRUN} (Batch status)")

    @kopf.on.startup(id="batch-sync", registry=reg)
    async def start_batch_sync(**_: Any) -> None:
        # When the operator starts, not when the registry is built: building it has no side effects.
        threading.Thread(target=sync.run, args=(runtime.stopping,), name="bridge-batches", daemon=True).start()

    return reg


def settings() -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    s.posting.enabled = False  # the bridge records its own Events
    s.watching.server_timeout = 300  # re-open watches now and then
    s.watching.client_timeout = 330
    s.networking.request_timeout = 60
    return s


async def operate(runtime: Runtime) -> None:
    """Run kopf until it stops, with the event loop's heartbeat in the runtime's health."""
    ready = asyncio.Event()
    health = runtime.health

    async def heartbeat() -> None:
        while True:
            health.beat("event-loop", 30.0)
            if ready.is_set():
                health.set("watching", True)
            await asyncio.sleep(2.0)

    beating = asyncio.create_task(heartbeat())
    health.set("operator", True)
    try:
        await kopf.operator(
            registry=registry(runtime),
            settings=settings(),
            standalone=True,
            clusterwide=not runtime.config.namespaces,
            namespaces=list(runtime.config.namespaces),
            ready_flag=ready,
        )
    finally:
        health.set("operator", False)
        beating.cancel()
