"""The bridge's one Kubernetes adapter: ``KubeApi`` (what the decisions call) and ``KubernetesApi`` over
the official client.

Custom objects are addressed by plural (``tasks``, ``batchruns``, ``batches``, ``workspaceconfigs``).
Status and metadata writes are merge patches that carry the ``metadata.resourceVersion`` the decision
was taken on: a concurrent write by the run's ops answers 409, raised as ``Conflict``, and the caller
re-reads and decides again; a 404 is ``Gone``. Events go through ``kubetask.kube.events`` (the one
Event body of the project) and never raise. Tests pass a fake with the same methods.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import kubernetes

from kubetask.api import GROUP, VERSION
from kubetask.kube import listing
from kubetask.kube.events import EventRecorder

TASKS = "tasks"
BATCHRUNS = "batchruns"
BATCHES = "batches"
WORKSPACE_CONFIGS = "workspaceconfigs"

Obj = dict[str, Any]

COMPONENT = "kubetask-bridge"
TIMEOUT = (5, 30)  # connect, read
LIST_TIMEOUT = (5, 120)
PAGE = 500


class Conflict(Exception):
    """The object changed since it was read (HTTP 409): re-read and decide again."""


class Gone(Exception):
    """The object no longer exists (HTTP 404)."""


class KubeApi(Protocol):
    """The Kubernetes calls of the bridge."""

    def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        """The object (None on 404)."""
        ...

    def list(self, plural: str, namespaces: Sequence[str], *, label_selector: str | None = None) -> list[Obj]:
        """Every object of ``plural`` in ``namespaces`` (all namespaces when empty), page by page."""
        ...

    def patch_status(
        self, plural: str, namespace: str, name: str, resource_version: str | None, status: Mapping[str, Any]
    ) -> Obj:
        """Merge-patch ``/status`` with ``resourceVersion`` as precondition; raises Conflict or Gone."""
        ...

    def patch_metadata(
        self, plural: str, namespace: str, name: str, resource_version: str | None, metadata: Mapping[str, Any]
    ) -> Obj:
        """Merge-patch ``metadata`` (a null removes an annotation) with ``resourceVersion`` as precondition."""
        ...

    def delete(self, plural: str, namespace: str, name: str) -> bool:
        """Delete in the background (dependents follow); False when it was already gone."""
        ...

    def job_exists(self, namespace: str, name: str) -> bool: ...

    def may(self, user: str, groups: Sequence[str], verb: str, api_group: str, resource: str, namespace: str) -> bool:
        """Whether the API server lets ``user`` (in ``groups``) ``verb`` ``resource`` in ``namespace``."""
        ...

    def emit_event(self, obj: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        """Record an Event about ``obj``; never raises (an Event is a courtesy, the status is the record)."""
        ...


class KubernetesApi:
    """``KubeApi`` over the official kubernetes client (one ApiClient, thread-safe use)."""

    def __init__(
        self,
        api_client: Any = None,
        *,
        custom: Any = None,
        batch: Any = None,
        core: Any = None,
        component: str = COMPONENT,
    ):
        """From an ``ApiClient``; ``custom``/``batch``/``core`` replace the generated APIs built from it."""
        self._custom = custom or kubernetes.client.CustomObjectsApi(api_client)
        self._batch = batch or kubernetes.client.BatchV1Api(api_client)
        self._core = core or kubernetes.client.CoreV1Api(api_client)
        self._authorization = kubernetes.client.AuthorizationV1Api(api_client)
        self._events = EventRecorder(self._core, component, socket.gethostname(), TIMEOUT)

    @staticmethod
    def _errors(e: kubernetes.client.ApiException, namespace: str, name: str, resource_version: Any) -> Exception:
        if e.status == 409:
            return Conflict(f"{namespace}/{name} changed since resourceVersion {resource_version}")
        if e.status == 404:
            return Gone(f"{namespace}/{name}")
        return e

    def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        try:
            return self._custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
                GROUP, VERSION, namespace, plural, name, _request_timeout=TIMEOUT
            )
        except kubernetes.client.ApiException as e:
            if e.status == 404:
                return None
            raise

    def list(self, plural: str, namespaces: Sequence[str], *, label_selector: str | None = None) -> list[Obj]:
        return listing.list_custom_objects(
            self._custom, plural, namespaces, label_selector=label_selector, page_size=PAGE, timeout=LIST_TIMEOUT
        )

    def _merge_patch(self, plural: str, namespace: str, name: str, body: dict[str, Any], *, status: bool) -> Obj:
        call = (
            self._custom.patch_namespaced_custom_object_status
            if status
            else self._custom.patch_namespaced_custom_object
        )
        try:
            return call(  # type: ignore[no-any-return]
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                body,
                _content_type="application/merge-patch+json",
                _request_timeout=TIMEOUT,
            )
        except kubernetes.client.ApiException as e:
            raise self._errors(e, namespace, name, (body.get("metadata") or {}).get("resourceVersion")) from None

    def patch_status(
        self, plural: str, namespace: str, name: str, resource_version: str | None, status: Mapping[str, Any]
    ) -> Obj:
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return self._merge_patch(plural, namespace, name, body, status=True)

    def patch_metadata(
        self, plural: str, namespace: str, name: str, resource_version: str | None, metadata: Mapping[str, Any]
    ) -> Obj:
        meta = dict(metadata)
        if resource_version:
            meta["resourceVersion"] = resource_version
        return self._merge_patch(plural, namespace, name, {"metadata": meta}, status=False)

    def delete(self, plural: str, namespace: str, name: str) -> bool:
        try:
            self._custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, propagation_policy="Background", _request_timeout=TIMEOUT
            )
            return True
        except kubernetes.client.ApiException as e:
            if e.status == 404:
                return False
            raise

    def job_exists(self, namespace: str, name: str) -> bool:
        try:
            self._batch.read_namespaced_job(name, namespace, _request_timeout=TIMEOUT)
            return True
        except kubernetes.client.ApiException as e:
            if e.status == 404:
                return False
            raise

    def may(self, user: str, groups: Sequence[str], verb: str, api_group: str, resource: str, namespace: str) -> bool:
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": list(groups),
                "resourceAttributes": {"namespace": namespace, "verb": verb, "group": api_group, "resource": resource},
            },
        }
        answer = self._authorization.create_subject_access_review(review, _request_timeout=TIMEOUT)
        return bool(answer.status.allowed)

    def emit_event(self, obj: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        self._events.emit(obj, reason, message, warning=warning)
