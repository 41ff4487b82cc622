"""The run worker's one adapter over Kubernetes: the kubernetes client and dagster-k8s's client.

Everything the run's ops ask of the API server goes through ``Kube``: custom resources and their
status, the context readers (``contexts.ContextReader``), the ConfigMap, Secret and Job of an attempt,
waiting for the pod, and Events. Client configuration and retries (``kubetask.kube.config``), the
Event body (``kubetask.kube.events``) and the caches (``kubetask.kube.informer``) are shared with the
bridge; how a pod ended is decided by the pure ``kubetask.domain.outcomes``.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import kubernetes
from dagster_k8s.client import DagsterK8sUnrecoverableAPIError, DagsterKubernetesClient
from kubernetes.client.rest import ApiException

from kubetask import vocabulary
from kubetask.api import GROUP, VERSION
from kubetask.domain import manifests, outcomes, redact
from kubetask.domain.errors import TaskError
from kubetask.domain.outcomes import PodOutcome
from kubetask.kube import config
from kubetask.kube.events import EventRecorder
from kubetask.kube.http import HttpFetcher
from kubetask.kube.informer import Informer, InformerRegistry

log = logging.getLogger(__name__)

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
WAKE_SECONDS = 0.5  # how soon a waiter notices a deadline or an interrupt when nothing changes
JOB_CACHE_GRACE_SECONDS = 10.0  # a Job absent from the cache this long after creation is looked up
DIRECT_READ_SECONDS = 5.0  # ... at most this often per waiting Task
INFORMER_SYNC_SECONDS = 30.0


class Conflict(Exception):
    """A conditional write found the object changed since it was read."""


class LogUnavailable(Exception):
    """The API server could not give a container's log."""


class WaitInterrupted(Exception):
    """The run is being terminated while a step waited for its pod."""


class Kube:
    """Kubernetes calls of the task ops."""

    def __init__(self, kubeconfig: str | None = None, fetcher: HttpFetcher | None = None):
        config.install_run_worker_default(kubeconfig)
        self.client = DagsterKubernetesClient.production_client()
        self.core = self.client.core_api
        self.batch = self.client.batch_api
        self.custom = kubernetes.client.CustomObjectsApi()
        self._fetcher = fetcher or HttpFetcher()
        self._informers = InformerRegistry()
        self._events = EventRecorder(self.core, component="kubetask-dagster")
        self._recent: dict[tuple[str, ...], tuple[float, Any]] = {}
        self._recent_lock = threading.Lock()

    # --- custom resources -----------------------------------------------------------------------

    def get_custom(self, plural: str, namespace: str, name: str, max_age: float = 0.0) -> dict[str, Any] | None:
        """The object, or None when it does not exist.

        ``max_age`` > 0 accepts a copy read by any thread of this process at most that many seconds
        ago: the steps of a BatchRun share one read of their WorkspaceConfig and pause annotation."""
        read = partial(
            _unless_missing, self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
        )
        return self._recently_read(("get", plural, namespace, name), max_age, read)

    def forget(self, plural: str, namespace: str, *, name: str = "", label_selector: str = "") -> None:
        """Drop the shared copy of that object (or listing): the next read with a ``max_age`` reads it anew."""
        key = ("get", plural, namespace, name) if name else ("list", plural, namespace, label_selector)
        with self._recent_lock:
            self._recent.pop(key, None)

    def _recently_read(self, key: tuple[str, ...], max_age: float, read: Callable[[], Any]) -> Any:
        if max_age <= 0:
            return read()
        with self._recent_lock:
            read_at, value = self._recent.get(key, (float("-inf"), None))
            if time.monotonic() - read_at <= max_age:
                return value
            value = read()
            self._recent[key] = (time.monotonic(), value)
            return value

    def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any], *, resource_version: str | None = None
    ) -> dict[str, Any] | None:
        """Merge-patch the status subresource; None when the object is gone. With ``resource_version``,
        only if the object is still at it: else ``Conflict`` (someone wrote in between)."""
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            return _unless_missing(
                self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, plural, name, body
            )
        except ApiException as e:
            if e.status == 409 and resource_version is not None:
                raise Conflict(
                    f"{plural} {namespace}/{name} changed since resourceVersion {resource_version}"
                ) from None
            raise

    def create_custom(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Create the object; None when one of that name exists (409: the caller decides whether to adopt it)."""
        try:
            created: dict[str, Any] = self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, body
            )
        except ApiException as e:
            if e.status == 409:
                return None
            raise
        return created

    def list_custom(
        self, plural: str, namespace: str, label_selector: str, max_age: float = 0.0
    ) -> list[dict[str, Any]]:
        """The objects of ``plural`` in ``namespace`` that match ``label_selector`` (``max_age``: as ``get_custom``)."""

        def read() -> list[dict[str, Any]]:
            page = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, label_selector=label_selector
            )
            return list(page["items"])

        return self._recently_read(("list", plural, namespace, label_selector), max_age, read)

    def patch_custom(self, plural: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch the object (not its status); None when it is gone."""
        return _unless_missing(
            lambda: self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, patch, _content_type="application/merge-patch+json"
            )
        )

    def delete_custom(self, plural: str, namespace: str, name: str) -> bool:
        """Delete the object (its dependents in the background); False when it was already gone."""
        deleted = _unless_missing(
            lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, propagation_policy="Background"
            )
        )
        return deleted is not None

    # --- context readers (contexts.ContextReader) ------------------------------------------------

    def config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        config_map = _unless_missing(self.core.read_namespaced_config_map, name, namespace)
        return None if config_map is None else config_map.data or {}

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        secret = _unless_missing(self.core.read_namespaced_secret, name, namespace)
        if secret is None:
            return None
        data = secret.data or {}
        return {k: base64.b64decode(v).decode("utf-8", errors="replace") for k, v in data.items()}

    def secret_keys(self, namespace: str, name: str) -> list[str] | None:
        """The key names of a Secret (never its values), or None when it does not exist."""
        secret = _unless_missing(self.core.read_namespaced_secret, name, namespace)
        return None if secret is None else sorted(secret.data or {})

    def fetch(self, url: str, headers: dict[str, str], timeout: float, max_bytes: int) -> str:
        return self._fetcher.fetch(url, headers, timeout, max_bytes)

    # --- context ConfigMap / Secret and the Job --------------------------------------------------

    def apply_config_map(self, body: dict[str, Any]) -> None:
        """Create, or replace our own (a rerun may resolve new content): a Task's, or a BatchRun's common
        ConfigMap; see ``_claim``."""
        self._apply(
            body,
            "ConfigMap",
            self.core.create_namespaced_config_map,
            self.core.read_namespaced_config_map,
            self.core.replace_namespaced_config_map,
            self.core.delete_namespaced_config_map,
        )

    def apply_secret(self, body: dict[str, Any]) -> None:
        self._apply(
            body,
            "Secret",
            self.core.create_namespaced_secret,
            self.core.read_namespaced_secret,
            self.core.replace_namespaced_secret,
            self.core.delete_namespaced_secret,
        )

    def _apply(self, body: dict[str, Any], kind: str, create, read, replace, delete) -> None:
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            create(ns, body)
            return
        except ApiException as e:
            if e.status != 409:
                raise
        existing = read(name, ns)
        if self._claim(kind, existing, body) == manifests.OURS:
            replace(
                name,
                ns,
                {**body, "metadata": {**body["metadata"], "resourceVersion": existing.metadata.resource_version}},
            )
        else:  # a deleted predecessor's, which garbage collection has not removed yet
            delete(name, ns, body=kubernetes.client.V1DeleteOptions(preconditions={"uid": existing.metadata.uid}))
            create(ns, body)

    def _claim(self, kind: str, existing: Any, body: dict[str, Any]) -> str:
        """``OURS`` or ``PREDECESSOR``; raises ``TaskError(NameConflict)`` for anyone else's object."""
        owners = [self.core.api_client.sanitize_for_serialization(o) for o in existing.metadata.owner_references or []]
        [ours] = body["metadata"]["ownerReferences"]
        claim = manifests.ownership(owners, ours)
        if claim == manifests.FOREIGN:
            owner = next((f"{o['kind']} {o['name']}" for o in owners if o.get("controller")), "no controller")
            raise TaskError(
                vocabulary.NAME_CONFLICT,
                f"{kind} {existing.metadata.name} exists and is not this {ours['kind']}'s (owner: {owner}); "
                f"delete it or give the {ours['kind']} another name",
            )
        return claim

    def get_job(self, namespace: str, name: str):
        return _unless_missing(self.batch.read_namespaced_job, name, namespace)

    def create_job(self, body: dict[str, Any]) -> bool:
        """Create the Job; False when it already existed (a restarted op resumes instead of duplicating)."""
        try:
            self.client.create_namespaced_job_with_retries(
                body, body["metadata"]["namespace"], wait_time_between_attempts=1.0
            )
        except DagsterK8sUnrecoverableAPIError as e:
            cause = getattr(e, "k8s_api_exception", None) or e.__cause__
            if not (isinstance(cause, ApiException) and cause.status == 409):
                raise
        else:
            return True
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        existing = self.batch.read_namespaced_job(name, ns)
        if self._claim("Job", existing, body) == manifests.OURS:
            return False  # this Task's: a restarted op resumes it
        self.batch.delete_namespaced_job(
            name,
            ns,
            body=kubernetes.client.V1DeleteOptions(
                propagation_policy="Background", preconditions={"uid": existing.metadata.uid}
            ),
        )
        return self.create_job(body)

    def delete_job(self, namespace: str, name: str) -> None:
        _unless_missing(lambda: self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background"))

    def pod_log_tail(
        self,
        namespace: str,
        pod: str,
        lines: int = 50,
        container: str = "agent",
        max_bytes: int = redact.LOG_TAIL_MAX_BYTES,
    ) -> str:
        """The last ``lines`` lines of the container's log, at most ``max_bytes`` of them: an agent printing one
        huge line cannot make the run worker read it all. A cut line is dropped, so no half of a secret
        escapes redaction."""
        try:
            text = _log_text(
                self.core.read_namespaced_pod_log(
                    pod, namespace, container=container, tail_lines=lines, limit_bytes=max_bytes, _preload_content=False
                )
            )
        except ApiException as e:
            return f"(log unavailable: {e.status} {e.reason})"
        return redact.complete_lines(text, max_bytes)

    def pod_log(
        self, namespace: str, pod: str, container: str = "agent", max_bytes: int = redact.KEPT_LOG_MAX_BYTES
    ) -> str:
        """The container's log from its start, at most ``max_bytes`` (a cut last line dropped, as in
        ``pod_log_tail``); ``LogUnavailable`` when the API server has none to give (no kubelet, pod gone)."""
        try:
            text = _log_text(
                self.core.read_namespaced_pod_log(
                    pod, namespace, container=container, limit_bytes=max_bytes, _preload_content=False
                )
            )
        except ApiException as e:
            raise LogUnavailable(f"{e.status} {e.reason}") from None
        return redact.complete_lines(text, max_bytes)

    # --- waiting ------------------------------------------------------------------------------

    def wait_for_pod_end(
        self,
        namespace: str,
        job_name: str,
        *,
        label_selector: str,
        deadline_seconds: float | None,
        on_running: Callable[[str], None] | None = None,
        interrupted: Callable[[], bool] = lambda: False,
        no_pod_grace: float = 60.0,
        on_suspended: Callable[[bool], None] | None = None,
        on_admitted: Callable[[], None] | None = None,
        lift_gate: str | None = None,
    ) -> PodOutcome:
        """Wait until the Job's pod terminates, fails to start, or the Job disappears.

        Reads the process's shared pod and Job caches (``label_selector`` chooses the watch: the
        BatchRun's or the Task's objects), so many waiting Tasks cost one watch, not one each.
        Raises ``WaitInterrupted`` as soon as ``interrupted()`` turns true.

        A suspended Job (Kueue's, until it admits it) is waited for without a deadline: the deadline and
        the no-pod grace count from its admission. ``on_suspended(evicted)`` is called when the Job is seen
        suspended (``evicted``: it had run, and its pods are being deleted, which is no outcome), and
        ``on_admitted()`` when it is seen resumed. While the Job runs, its pods' scheduling gate
        ``lift_gate`` is removed (the caller holds what the gate waited for).
        """
        pods = self._informer("pods", self.core.list_namespaced_pod, namespace, label_selector, JOB_NAME_LABEL)
        jobs = self._informer("jobs", self.batch.list_namespaced_job, namespace, label_selector)
        started = time.monotonic()
        seen_running: str | None = None
        last_pod: str | None = None
        job_seen = False
        last_direct_read = float("-inf")
        suspended = False
        lifted: set[str] = set()
        while True:
            if interrupted():
                raise WaitInterrupted(job_name)
            cached = jobs.get(job_name)
            job_seen = job_seen or cached is not None
            if cached is not None and _suspended(cached) != suspended:  # a Job gone is no admission
                suspended = not suspended
                if suspended and on_suspended:
                    on_suspended(last_pod is not None)
                if not suspended:
                    started, last_pod, seen_running = time.monotonic(), None, None
                    if on_admitted:
                        on_admitted()
            if suspended and cached is not None:
                jobs.wait_for_change(jobs.version, WAKE_SECONDS)
                continue
            if not suspended and deadline_seconds is not None and time.monotonic() - started > deadline_seconds:
                return PodOutcome(
                    False, vocabulary.TIMEOUT, f"the attempt ran longer than {int(deadline_seconds)} s", last_pod
                )
            pod_version = pods.version
            for pod in pods.by_index(job_name):
                last_pod = pod.metadata.name
                # once per pod: the cache may show the gate a while after it is lifted
                if (
                    lift_gate
                    and last_pod not in lifted
                    and any(g.name == lift_gate for g in pod.spec.scheduling_gates or [])
                ):
                    self._lift_gate(namespace, pod, lift_gate)
                    lifted.add(last_pod)
                outcome = outcomes.pod_outcome(pod)
                if outcome is not None:
                    if not outcome.succeeded and _suspended(self.get_job(namespace, job_name)):
                        break  # killed by an eviction the Job cache has not shown yet: the next pass sees it
                    if not outcome.succeeded and outcomes.past_deadline(jobs.get(job_name)):
                        return outcomes.timed_out(outcome, job_name)  # killed by the deadline: exit 143 or 137
                    return outcome
                if pod.status.phase == "Running" and seen_running != last_pod:
                    seen_running = last_pod
                    if on_running:
                        on_running(last_pod)
            job = jobs.get(job_name)
            now = time.monotonic()
            confirmed_missing = False
            if (
                job is None
                and (job_seen or now - started > JOB_CACHE_GRACE_SECONDS)
                and now - last_direct_read >= DIRECT_READ_SECONDS
            ):
                job = self.get_job(namespace, job_name)  # the cache may lag (a watch reconnecting): ask the API server
                last_direct_read, confirmed_missing = now, job is None
            if job is not None:
                job_seen = True
                outcome = outcomes.job_outcome(job, job_name, last_pod)
            else:  # gone: only when the API server itself says so, after the Job had existed
                outcome = outcomes.job_outcome(None, job_name, last_pod) if job_seen and confirmed_missing else None
            if outcome is None and last_pod is None and time.monotonic() - started > no_pod_grace:
                outcome = self._pod_creation_failure(namespace, job_name)
                no_pod_grace += 60.0  # look at the Events again a minute later, not on every wake-up
            if outcome is not None:
                return outcome
            pods.wait_for_change(pod_version, WAKE_SECONDS)  # a Job's change is seen on the next wake-up

    def _lift_gate(self, namespace: str, pod: Any, gate: str) -> None:
        remaining = [{"name": g.name} for g in pod.spec.scheduling_gates if g.name != gate]
        patch = [{"op": "replace", "path": "/spec/schedulingGates", "value": remaining}]
        _unless_missing(self.core.patch_namespaced_pod, pod.metadata.name, namespace, patch)

    def wait_pods_ended(self, namespace: str, job_name: str, *, label_selector: str, timeout: float) -> bool:
        """True once no pod of the Job runs or waits to run (each ended or gone); False after ``timeout``.

        A deleted Job's pod keeps its agent running for its grace period (30 s by default)."""
        pods = self._informer("pods", self.core.list_namespaced_pod, namespace, label_selector, JOB_NAME_LABEL)
        deadline = time.monotonic() + timeout
        while True:
            version = pods.version
            if all(pod.status.phase in ("Succeeded", "Failed") for pod in pods.by_index(job_name)):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            pods.wait_for_change(version, min(WAKE_SECONDS, remaining))

    def _informer(
        self, kind: str, list_fn, namespace: str, label_selector: str, index_label: str | None = None
    ) -> Informer:
        informer = self._informers.get(kind, list_fn, namespace, label_selector, index_label)
        informer.wait_synced(INFORMER_SYNC_SECONDS)
        return informer

    def _pod_creation_failure(self, namespace: str, job_name: str) -> PodOutcome | None:
        events = self.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={job_name}").items
        failed = [e.message for e in events if e.reason == "FailedCreate"]
        return PodOutcome(False, vocabulary.POD_CREATION_FAILED, failed[-1]) if failed else None

    # --- events -------------------------------------------------------------------------------

    def emit_event(self, obj: dict[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        """Record a Kubernetes Event on a kubetask object (best effort: never fails the caller)."""
        self._events.emit(obj, reason, message, warning=warning)


def _log_text(response: Any) -> str:
    """A pod log read raw (``_preload_content=False``), as text. The client's own decoding of a log
    gives ``str(bytes)`` since kubernetes-client 36 ("b'...'", newlines escaped), which no line-based
    cut or redaction could read. Invalid UTF-8 becomes U+FFFD."""
    try:
        return bytes(response.data).decode("utf-8", errors="replace")
    finally:
        response.release_conn()


def _suspended(job: Any) -> bool:
    """The Job exists and is suspended (spec.suspend: Kueue has not admitted it, or evicted it)."""
    return bool(job is not None and job.spec is not None and job.spec.suspend)


def _unless_missing(call, *args):
    """``call(*args)``, or None when the API server answers 404."""
    try:
        return call(*args)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
