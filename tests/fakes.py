"""Fakes and object builders shared by the unit tests and the benchmarks (never imported by production code)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.rest import ApiException

from kubetask import vocabulary
from kubetask.domain.contexts import display_url, remote_file_unavailable


@dataclass
class StaticReader:
    """An in-memory ``ContextReader`` for tests; records every read and fetch.

    ``config_maps`` and ``secrets`` are keyed by ``(namespace, name)``; ``urls`` maps a URL to its body.
    """

    config_maps: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    reads: list[tuple[str, str, str]] = field(default_factory=list)
    fetches: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    budgets: list[tuple[float, int]] = field(default_factory=list)
    """(timeout, max_bytes) of each fetch."""

    def config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        self.reads.append(("configMap", namespace, name))
        return self.config_maps.get((namespace, name))

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        self.reads.append(("secret", namespace, name))
        return self.secrets.get((namespace, name))

    def fetch(self, url: str, headers: dict[str, str], timeout: float, max_bytes: int) -> str:
        self.fetches.append((url, dict(headers)))
        self.budgets.append((timeout, max_bytes))
        if url not in self.urls:
            raise remote_file_unavailable(display_url(url), "returned HTTP 404")
        body = self.urls[url]
        if len(body.encode()) > max_bytes:
            raise remote_file_unavailable(display_url(url), f"returned more than {max_bytes} bytes")
        return body


# --- Batches and BatchRuns over a fake CustomObjectsApi ----------------------------------------

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def batch(name: str = "nightly", ns: str = "team-a", *, uid: str = "uid-1", generation: int = 1, tasks: int = 3,
          schedule: dict | None = None, status: dict | None = None, **spec) -> dict:
    obj = {
        "apiVersion": "kubetask.io/v1alpha1", "kind": "Batch",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "generation": generation},
        "spec": {"commonContext": [], "variableContexts": [[] for _ in range(tasks)], **spec},
    }
    if schedule is not None:
        obj["spec"]["schedule"] = schedule
    if status is not None:
        obj["status"] = status
    return obj


def run(name: str, phase: str | None = None, *, owner_uid: str = "uid-1", batch_name: str = "nightly", created: str = "2026-12-01T00:00:00Z",
        completed: str | None = None, stop: bool = False, ns: str = "team-a") -> dict:
    obj: dict[str, Any] = {
        "apiVersion": "kubetask.io/v1alpha1", "kind": "BatchRun",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "creationTimestamp": created,
                     "labels": {vocabulary.LABEL_BATCH: batch_name},
                     "ownerReferences": [{"apiVersion": "kubetask.io/v1alpha1", "kind": "Batch", "name": batch_name, "uid": owner_uid}]},
        "spec": {"batchRef": batch_name},
    }
    if stop:
        obj["metadata"]["annotations"] = {vocabulary.STOP: "true"}
    if phase:
        obj["status"] = {"phase": phase, **({"completionTime": completed} if completed else {})}
    return obj


class FakeCustom:
    """The CustomObjectsApi calls of the tick, over a dict."""

    def __init__(self):
        self.objs: dict[tuple[str, str, str], dict] = {}
        self.calls: list[tuple] = []
        self._uid = 0

    def add(self, plural: str, obj: dict) -> dict:
        self.objs[(plural, obj["metadata"]["namespace"], obj["metadata"]["name"])] = copy.deepcopy(obj)
        return obj

    def get_namespaced_custom_object(self, group, version, ns, plural, name, **_):
        try:
            return copy.deepcopy(self.objs[(plural, ns, name)])
        except KeyError:
            raise ApiException(status=404) from None

    def list_namespaced_custom_object(self, group, version, ns, plural, label_selector="", **_):
        key, _, value = label_selector.partition("=")
        return {"items": [copy.deepcopy(o) for (p, n, _), o in sorted(self.objs.items())
                          if p == plural and n == ns and (not key or (o["metadata"].get("labels") or {}).get(key) == value)]}

    def create_namespaced_custom_object(self, group, version, ns, plural, body, **_):
        self.calls.append(("create", plural, body["metadata"]["name"]))
        if (plural, ns, body["metadata"]["name"]) in self.objs:
            raise ApiException(status=409)
        self._uid += 1
        obj = copy.deepcopy(body)
        obj["metadata"].update(uid=f"new-{self._uid}", creationTimestamp="2026-12-01T03:00:01Z")
        return self.add(plural, obj)

    def patch_namespaced_custom_object(self, group, version, ns, plural, name, body, **_):
        self.calls.append(("patch", plural, name, body))
        obj = self.objs[(plural, ns, name)]
        obj["metadata"].setdefault("annotations", {}).update(body["metadata"]["annotations"])
        return obj

    def patch_namespaced_custom_object_status(self, group, version, ns, plural, name, body, **_):
        self.calls.append(("status", plural, name, body["status"]))
        obj = self.objs[(plural, ns, name)]
        status = obj.setdefault("status", {})
        for k, v in body["status"].items():
            if v is None:
                status.pop(k, None)
            else:
                status[k] = v
        return obj

    def delete_namespaced_custom_object(self, group, version, ns, plural, name, **_):
        self.calls.append(("delete", plural, name))
        if self.objs.pop((plural, ns, name), None) is None:
            raise ApiException(status=404)


class FakeKube:
    """The parts of kube.Kube the tick uses."""

    def __init__(self):
        self.custom = FakeCustom()

    def get_custom(self, plural, ns, name):
        try:
            return self.custom.get_namespaced_custom_object("", "", ns, plural, name)
        except ApiException:
            return None

    def patch_status(self, plural, ns, name, status):
        return self.custom.patch_namespaced_custom_object_status("", "", ns, plural, name, {"status": status})

    def create_custom(self, plural, ns, body):
        try:
            return self.custom.create_namespaced_custom_object("", "", ns, plural, body)
        except ApiException:  # 409
            return None

    def list_custom(self, plural, ns, label_selector):
        return self.custom.list_namespaced_custom_object("", "", ns, plural, label_selector=label_selector)["items"]

    def patch_custom(self, plural, ns, name, patch):
        try:
            return self.custom.patch_namespaced_custom_object("", "", ns, plural, name, patch)
        except KeyError:
            return None

    def delete_custom(self, plural, ns, name):
        try:
            self.custom.delete_namespaced_custom_object("", "", ns, plural, name)
            return True
        except ApiException:  # 404
            return False
