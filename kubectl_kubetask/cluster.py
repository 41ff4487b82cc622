"""The Kubernetes edge: kubeconfig and namespace, reads of Tasks, BatchRuns, Jobs and pods, annotations, pod logs.

Every call goes through ``_call``, which turns what the client raises into one-line ``PluginError``s: the
API server unreachable (naming its URL), a refusal (its message), a kind the server does not serve.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import kubernetes
import urllib3
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

from kubetask import vocabulary
from kubetask.api.base import GROUP, VERSION
from kubetask.objects import Obj

from .errors import PluginError, cluster_unreachable, connection_problem
from .kinds import Kind

T = TypeVar("T")
TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds of every call but a followed log."""


class LogUnavailable(Exception):
    """The API server has no log of the container to give (pod gone, container not started, no kubelet)."""


def default_namespace(
    contexts: Sequence[Mapping[str, Any]], current: Mapping[str, Any] | None, wanted: str | None
) -> str:
    """The namespace of the kubeconfig context ``wanted`` (else the current one), else ``default``."""
    chosen = next((c for c in contexts if c.get("name") == wanted), None) if wanted else current
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


def api_message(error: ApiException) -> str:
    """The ``message`` of the API server's Status body, else its HTTP status and reason."""
    try:
        message = json.loads(error.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or f"{error.status} {error.reason}")


def _not_found_of(error: ApiException, name: str) -> bool:
    """A 404 about the object itself (its Status names it), not about the resource type (no CRD)."""
    if error.status != 404:
        return False
    try:
        details = json.loads(error.body or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return False
    return bool(details.get("name") == name)


class Cluster:
    """One kubeconfig context and one namespace."""

    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
        configuration = kubernetes.client.Configuration()
        if kubeconfig is not None and not os.path.isfile(kubeconfig):
            raise PluginError(f"the kubeconfig {kubeconfig} does not exist")
        try:
            kubernetes.config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
            if namespace is None:
                contexts, current = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
                namespace = default_namespace(contexts, current, context)
        except ConfigException as e:
            raise PluginError(
                f"cannot use the kubeconfig {kubeconfig or '($KUBECONFIG or ~/.kube/config)'}: {e}"
            ) from None
        except OSError as e:
            raise PluginError(f"cannot read the kubeconfig {kubeconfig or ''}: {e.strerror or e}") from None
        # A CLI says quickly that the server is not there: one retry, short backoff.
        configuration.retries = urllib3.Retry(total=2, connect=2, read=1, backoff_factor=0.2, allowed_methods=None)
        self.server: str = configuration.host
        self.namespace: str = namespace
        self._client = kubernetes.client.ApiClient(configuration)
        self._custom = kubernetes.client.CustomObjectsApi(self._client)
        self._core = kubernetes.client.CoreV1Api(self._client)
        self._batch = kubernetes.client.BatchV1Api(self._client)

    def _dict(self, model: Any) -> Obj:
        """A client model as the API server's JSON (camelCase keys, RFC 3339 times)."""
        return self._client.sanitize_for_serialization(model)  # type: ignore[no-any-return]

    def _call(self, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except ApiException as e:
            if e.status in (401, 403):
                raise PluginError(f"the API server at {self.server} refused to {what}: {api_message(e)}") from None
            if e.status == 0 or e.status is None:
                raise cluster_unreachable(self.server, e.reason or "no answer") from None
            raise
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise cluster_unreachable(self.server, connection_problem(e)) from None

    # --- kubetask.io objects -----------------------------------------------------------------------

    def get(self, kind: Kind, name: str) -> Obj | None:
        """The object, None when it does not exist; ``PluginError`` when the server does not serve the kind."""

        def read() -> Obj | None:
            try:
                return self._custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
                    GROUP, VERSION, self.namespace, kind.plural, name, _request_timeout=TIMEOUT
                )
            except ApiException as e:
                if _not_found_of(e, name):
                    return None
                if e.status == 404:
                    raise PluginError(
                        f"the API server at {self.server} does not serve {kind.plural}.{GROUP} "
                        "(are the kubetask CRDs installed?)"
                    ) from None
                raise PluginError(f"cannot read {kind.name} '{name}': {api_message(e)}") from None

        return self._call(f"read {kind.plural}", read)

    def annotate(self, kind: Kind, name: str, annotations: Mapping[str, str | None]) -> Obj:
        """Merge-patch the object's annotations (None removes one); the object as written."""

        def patch() -> Obj:
            try:
                return self._custom.patch_namespaced_custom_object(  # type: ignore[no-any-return]
                    GROUP,
                    VERSION,
                    self.namespace,
                    kind.plural,
                    name,
                    {"metadata": {"annotations": dict(annotations)}},
                    _content_type="application/merge-patch+json",
                    _request_timeout=TIMEOUT,
                )
            except ApiException as e:
                if e.status in (401, 403):
                    raise
                raise PluginError(f"cannot annotate {kind.name} '{name}': {api_message(e)}") from None

        return self._call(f"patch {kind.plural}", patch)

    # --- what a Task's attempt runs as -------------------------------------------------------------

    def job(self, name: str) -> Obj | None:
        """The Job as a dict (camelCase, as ``kubectl get -o json``); None when it does not exist."""

        def read() -> Obj | None:
            try:
                job = self._batch.read_namespaced_job(name, self.namespace, _request_timeout=TIMEOUT)
            except ApiException as e:
                if e.status == 404:
                    return None
                raise PluginError(f"cannot read Job '{name}': {api_message(e)}") from None
            return self._dict(job)

        return self._call("read jobs", read)

    def pods(self, task: str, attempt: int | None) -> list[Obj]:
        """The pods of the Task's attempt (all attempts when None), oldest first, as dicts."""
        selector = f"{vocabulary.LABEL_TASK}={task}"
        if attempt is not None:
            selector += f",{vocabulary.LABEL_ATTEMPT}={attempt}"

        def read() -> list[Obj]:
            try:
                listed = self._core.list_namespaced_pod(
                    self.namespace, label_selector=selector, _request_timeout=TIMEOUT
                )
            except ApiException as e:
                raise PluginError(f"cannot list the pods of Task '{task}': {api_message(e)}") from None
            pods: list[Obj] = [self._dict(p) for p in listed.items]
            return sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))

        return self._call("list pods", read)

    def pod_log(self, pod: str, container: str, follow: bool) -> Iterator[str]:
        """The container's log as it arrives (to its end, or while it runs when ``follow``); ``LogUnavailable``
        before the first chunk when the server has none."""
        try:
            response = self._call(
                "read pod logs",
                lambda: self._core.read_namespaced_pod_log(
                    pod,
                    self.namespace,
                    container=container,
                    follow=follow,
                    _preload_content=False,
                    _request_timeout=(TIMEOUT[0], None) if follow else TIMEOUT,
                ),
            )
        except ApiException as e:
            raise LogUnavailable(api_message(e)) from None
        return self._chunks(response)

    def _chunks(self, response: Any) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            for chunk in response.stream(64 * 1024, decode_content=True):
                text = decoder.decode(chunk)
                if text:
                    yield text
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise cluster_unreachable(self.server, f"the log stream broke: {connection_problem(e)}") from None
        finally:
            response.release_conn()
