"""Listing the Batches the code location is built from (the I/O half of ``kubetask.domain.catalog``).

Listing is tolerant: an unreachable API server gives an empty catalog and a warning, never a failed
load, because a failed load would also take ``task_job`` and ``batch_job`` away.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from kubetask.domain.catalog import (
    ENV_CATALOG,
    LIST_TIMEOUT,
    PAGE_SIZE,
    BatchEntry,
    catalog_enabled,
    configured_namespaces,
    entries_from_batches,
)
from kubetask.kube import listing

log = logging.getLogger(__name__)


def list_batches(custom_api: Any, namespaces: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every Batch in ``namespaces`` (all when empty), page by page; raises on API errors."""
    return listing.list_custom_objects(custom_api, "batches", namespaces, page_size=PAGE_SIZE, timeout=LIST_TIMEOUT)


def load_entries(env: Mapping[str, str] | None = None, custom_api: Any = None) -> list[BatchEntry]:
    """List the Batches and build the catalog; on any error: an empty catalog and a warning."""
    if not catalog_enabled(env):
        log.info("Batch catalog disabled (%s); no Batch assets or schedules", ENV_CATALOG)
        return []
    namespaces = configured_namespaces(env)
    try:
        if custom_api is None:
            import kubernetes

            from kubetask.kube import config

            config.install_run_worker_default()
            custom_api = kubernetes.client.CustomObjectsApi()
        objs = list_batches(custom_api, namespaces)
    except Exception as e:  # API down, no kubeconfig, no RBAC, CRD missing: load the jobs anyway
        log.warning(
            "could not list Batches (%s: %s); loading the code location without Batch assets and schedules",
            type(e).__name__,
            str(e).splitlines()[0][:300] if str(e) else "",
        )
        return []
    entries = entries_from_batches(objs)
    log.info(
        "Batch catalog: %d Batches (%d scheduled) in %s",
        len(entries),
        sum(1 for e in entries if e.schedule),
        ",".join(namespaces) or "all namespaces",
    )
    return entries
