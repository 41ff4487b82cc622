"""Kubernetes Events on kubetask objects: one body for the bridge and the run's ops."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from kubetask import objects
from kubetask.api import API_VERSION

log = logging.getLogger(__name__)

MAX_MESSAGE = 1024


def event_body(
    obj: Mapping[str, Any],
    reason: str,
    message: str,
    *,
    warning: bool,
    component: str,
    host: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """A ``core/v1`` Event about ``obj`` (a Task, BatchRun or Batch as the API server returned it)."""
    meta = objects.meta(obj)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    involved = {
        "apiVersion": obj.get("apiVersion") or API_VERSION,
        "kind": obj.get("kind") or "Task",
        "name": meta["name"],
        "namespace": meta["namespace"],
        "uid": meta.get("uid"),
    }
    if meta.get("resourceVersion"):
        involved["resourceVersion"] = meta["resourceVersion"]
    source = {"component": component, **({"host": host} if host else {})}
    return {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": involved,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "type": "Warning" if warning else "Normal",
        "source": source,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventRecorder:
    """Writes Events through a ``CoreV1Api``; an Event is a courtesy (the status is the record), so a
    failed write is logged, never raised."""

    def __init__(self, core_api: Any, component: str, host: str | None = None, timeout: Any = None):
        self._core = core_api
        self._component = component
        self._host = host
        self._timeout = timeout

    def emit(self, obj: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        body = event_body(obj, reason, message, warning=warning, component=self._component, host=self._host)
        kwargs = {"_request_timeout": self._timeout} if self._timeout is not None else {}
        try:
            self._core.create_namespaced_event(body["metadata"]["namespace"], body, **kwargs)
        except Exception as e:
            log.warning("%s: could not record Event %s: %s", objects.name_of(obj), reason, e)
