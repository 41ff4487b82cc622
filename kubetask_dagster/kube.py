"""The one adapter over Kubernetes: the kubernetes client and dagster-k8s's DagsterKubernetesClient.

Everything that talks to the API server from the run's ops goes through ``Kube``; the domain modules
(contexts, manifests, status) stay pure.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import kubernetes
import urllib3
from dagster_k8s.client import DagsterK8sUnrecoverableAPIError, DagsterKubernetesClient
from kubernetes.client.rest import ApiException

from .api import GROUP, VERSION
from .contexts import HttpFetcher
from .informer import Informer, InformerRegistry

log = logging.getLogger(__name__)

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
WAKE_SECONDS = 0.5  # how soon a waiter notices a deadline or an interrupt when nothing changes
JOB_CACHE_GRACE_SECONDS = 10.0  # a Job absent from the cache this long after creation is looked up
DIRECT_READ_SECONDS = 5.0  # ... at most this often per waiting Task
INFORMER_SYNC_SECONDS = 30.0
CONNECTIONS_PER_PROCESS = 64  # steps of a BatchRun share one client: one connection each, no queueing


def api_retry_policy() -> urllib3.Retry:
    """How a request rides out an API server that restarts or sheds load (~85 s in all).

    Connection refused or dropped, 429 ("storage is (re)initializing") and 502/503/504 are retried
    with backoff 0, 1, 2, 4, 8, then 10 s, for every verb: a create is safe to repeat because every
    object kubetask creates has a fixed name (a repeat answers 409, which the callers adopt), and
    status writes are merge patches. Without this a restart of kube-apiserver failed every step that
    made a call during the ~10 s it was down."""
    return urllib3.Retry(
        total=12, backoff_factor=0.5, backoff_max=10, allowed_methods=None,
        status_forcelist=(429, 502, 503, 504), respect_retry_after_header=True, raise_on_status=False,
    )


class WaitInterrupted(Exception):
    """The run is being terminated while a step waited for its pod."""

# A pod waiting for one of these will not start without a person fixing something.
_STUCK_WAITING_REASONS = {
    "ErrImagePull": "ImagePullFailed",
    "ImagePullBackOff": "ImagePullFailed",
    "InvalidImageName": "ImagePullFailed",
    "CreateContainerConfigError": "ContainerConfigError",
    "CreateContainerError": "ContainerConfigError",
    "RunContainerError": "ContainerConfigError",
}


def load_kube_config(kubeconfig: str | None = None) -> None:
    """In-cluster config inside a pod, else the kubeconfig file (argument, $KUBECONFIG or ~/.kube/config)."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config()
    else:
        kubernetes.config.load_kube_config(config_file=kubeconfig)
    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = CONNECTIONS_PER_PROCESS
    configuration.retries = api_retry_policy()
    kubernetes.client.Configuration.set_default(configuration)


@dataclass
class PodOutcome:
    """How one attempt's pod ended."""

    succeeded: bool
    reason: str
    message: str
    pod_name: str | None = None
    exit_code: int | None = None


class Kube:
    """Kubernetes calls of the task ops."""

    def __init__(self, kubeconfig: str | None = None, fetcher: HttpFetcher | None = None):
        load_kube_config(kubeconfig)
        self.client = DagsterKubernetesClient.production_client()
        self.core = self.client.core_api
        self.batch = self.client.batch_api
        self.custom = kubernetes.client.CustomObjectsApi()
        self._fetcher = fetcher or HttpFetcher()
        self._informers = InformerRegistry()
        self._recent: dict[tuple[str, str, str], tuple[float, dict[str, Any] | None]] = {}
        self._recent_lock = threading.Lock()

    # --- custom resources -----------------------------------------------------------------------

    def get_custom(self, plural: str, namespace: str, name: str, max_age: float = 0.0) -> dict[str, Any] | None:
        """The object, or None when it does not exist.

        ``max_age`` > 0 accepts a copy read by any thread of this process at most that many seconds
        ago: the steps of a BatchRun share one read of their WorkspaceConfig and pause annotation."""
        if max_age <= 0:
            return _unless_missing(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name)
        key = (plural, namespace, name)
        with self._recent_lock:
            read_at, obj = self._recent.get(key, (float("-inf"), None))
            if time.monotonic() - read_at <= max_age:
                return obj
            obj = _unless_missing(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name)
            self._recent[key] = (time.monotonic(), obj)
            return obj

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch the status subresource; None when the object is gone."""
        return _unless_missing(
            self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, plural, name, {"status": status}
        )

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

    def fetch(self, url: str, headers: dict[str, str], timeout: float, max_bytes: int) -> str:
        return self._fetcher.fetch(url, headers, timeout, max_bytes)

    # --- context ConfigMap / Secret and the Job --------------------------------------------------

    def apply_config_map(self, body: dict[str, Any]) -> None:
        """Create, or replace when it exists (a rerun may resolve new content)."""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            self.core.create_namespaced_config_map(ns, body)
        except ApiException as e:
            if e.status != 409:
                raise
            self.core.replace_namespaced_config_map(name, ns, body)

    def apply_secret(self, body: dict[str, Any]) -> None:
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            self.core.create_namespaced_secret(ns, body)
        except ApiException as e:
            if e.status != 409:
                raise
            self.core.replace_namespaced_secret(name, ns, body)

    def get_job(self, namespace: str, name: str):
        return _unless_missing(self.batch.read_namespaced_job, name, namespace)

    def create_job(self, body: dict[str, Any]) -> bool:
        """Create the Job; False when it already existed (a restarted op resumes instead of duplicating)."""
        try:
            self.client.create_namespaced_job_with_retries(body, body["metadata"]["namespace"], wait_time_between_attempts=1.0)
        except DagsterK8sUnrecoverableAPIError as e:
            cause = getattr(e, "k8s_api_exception", None) or e.__cause__
            if isinstance(cause, ApiException) and cause.status == 409:
                return False
            raise
        return True

    def delete_job(self, namespace: str, name: str) -> None:
        _unless_missing(lambda: self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background"))

    def pod_log_tail(self, namespace: str, pod: str, lines: int = 50, container: str = "agent") -> str:
        try:
            return self.core.read_namespaced_pod_log(pod, namespace, container=container, tail_lines=lines)
        except ApiException as e:
            return f"(log unavailable: {e.status} {e.reason})"

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
    ) -> PodOutcome:
        """Wait until the Job's pod terminates, fails to start, or the Job disappears.

        Reads the process's shared pod and Job caches (``label_selector`` chooses the watch: the
        BatchRun's or the Task's objects), so many waiting Tasks cost one watch, not one each.
        Raises ``WaitInterrupted`` as soon as ``interrupted()`` turns true.
        """
        pods = self._informer("pods", self.core.list_namespaced_pod, namespace, label_selector, JOB_NAME_LABEL)
        jobs = self._informer("jobs", self.batch.list_namespaced_job, namespace, label_selector)
        started = time.monotonic()
        seen_running: str | None = None
        last_pod: str | None = None
        job_seen = False
        last_direct_read = float("-inf")
        while True:
            if interrupted():
                raise WaitInterrupted(job_name)
            if deadline_seconds is not None and time.monotonic() - started > deadline_seconds:
                return PodOutcome(False, "Timeout", f"the attempt ran longer than {int(deadline_seconds)} s", last_pod)
            pod_version = pods.version
            for pod in pods.by_index(job_name):
                last_pod = pod.metadata.name
                outcome = _pod_outcome(pod)
                if outcome is not None:
                    return outcome
                if pod.status.phase == "Running" and seen_running != last_pod:
                    seen_running = last_pod
                    if on_running:
                        on_running(last_pod)
            job = jobs.get(job_name)
            now = time.monotonic()
            confirmed_missing = False
            if job is None and (job_seen or now - started > JOB_CACHE_GRACE_SECONDS) and now - last_direct_read >= DIRECT_READ_SECONDS:
                job = self.get_job(namespace, job_name)  # the cache may lag (a watch reconnecting): ask the API server
                last_direct_read, confirmed_missing = now, job is None
            if job is not None:
                job_seen = True
                outcome = _job_outcome(job, job_name, last_pod)
            else:  # gone: only when the API server itself says so, after the Job had existed
                outcome = _job_outcome(None, job_name, last_pod) if job_seen and confirmed_missing else None
            if outcome is None and last_pod is None and time.monotonic() - started > no_pod_grace:
                outcome = self._pod_creation_failure(namespace, job_name)
                no_pod_grace += 60.0  # look at the Events again a minute later, not on every wake-up
            if outcome is not None:
                return outcome
            pods.wait_for_change(pod_version, WAKE_SECONDS)  # a Job's change is seen on the next wake-up

    def _informer(self, kind: str, list_fn, namespace: str, label_selector: str, index_label: str | None = None) -> Informer:
        informer = self._informers.get(kind, list_fn, namespace, label_selector, index_label)
        informer.wait_synced(INFORMER_SYNC_SECONDS)
        return informer

    def _pod_creation_failure(self, namespace: str, job_name: str) -> PodOutcome | None:
        events = self.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={job_name}").items
        failed = [e.message for e in events if e.reason == "FailedCreate"]
        return PodOutcome(False, "PodCreationFailed", failed[-1]) if failed else None

    # --- events -------------------------------------------------------------------------------

    def emit_event(self, obj: dict[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        """Record a Kubernetes Event on a kubetask object (best effort: never fails the caller)."""
        meta = obj["metadata"]
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"),
                "kind": obj.get("kind", "Task"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": "kubetask-dagster"},
            "firstTimestamp": _rfc3339_now(),
            "lastTimestamp": _rfc3339_now(),
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as e:  # an Event is a courtesy; the status is the record
            log.warning("could not record event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], e.reason)


def _job_outcome(job, job_name: str, last_pod: str | None) -> PodOutcome | None:
    """The attempt's result read from its Job: deleted, failed (deadline) or complete; else None."""
    if job is None or job.metadata.deletion_timestamp is not None:
        return PodOutcome(False, "JobDeleted", f"Job {job_name} was deleted before its pod finished", last_pod)
    for cond in (job.status.conditions if job.status else None) or []:
        if cond.type == "Failed" and cond.status == "True":
            reason = "Timeout" if cond.reason == "DeadlineExceeded" else (cond.reason or "JobFailed")
            return PodOutcome(False, reason, f"Job {job_name} failed: {cond.message or cond.reason}", last_pod)
        if cond.type == "Complete" and cond.status == "True":
            return PodOutcome(True, "Completed", f"Job {job_name} completed", last_pod, 0)
    return None


def _unless_missing(call, *args):
    """``call(*args)``, or None when the API server answers 404."""
    try:
        return call(*args)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def _rfc3339_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _pod_outcome(pod) -> PodOutcome | None:
    """The attempt's result if the pod has ended or cannot start; None while it may still run."""
    name = pod.metadata.name
    status = pod.status
    for init in status.init_container_statuses or []:
        term = init.state.terminated if init.state else None
        if term is not None and term.exit_code != 0:
            return PodOutcome(False, "InitContainerFailed", f"init container {init.name} exited with {term.exit_code} ({term.reason})", name, term.exit_code)
        waiting = init.state.waiting if init.state else None
        if waiting is not None and waiting.reason in _STUCK_WAITING_REASONS:
            return PodOutcome(False, _STUCK_WAITING_REASONS[waiting.reason], f"init container {init.name}: {waiting.reason}: {waiting.message or ''}".strip(), name)
    agent = next((c for c in status.container_statuses or [] if c.name == "agent"), None)
    if agent is not None and agent.state is not None:
        if agent.state.waiting is not None and agent.state.waiting.reason in _STUCK_WAITING_REASONS:
            w = agent.state.waiting
            return PodOutcome(False, _STUCK_WAITING_REASONS[w.reason], f"{w.reason}: {w.message or ''}".strip(), name)
        term = agent.state.terminated
        if term is not None and status.phase in ("Succeeded", "Failed"):
            if term.exit_code == 0:
                return PodOutcome(True, "Completed", "the agent exited with 0", name, 0)
            return PodOutcome(False, "AgentFailed", f"the agent exited with {term.exit_code} ({term.reason or 'Error'})", name, term.exit_code)
    if status.phase == "Failed":
        return PodOutcome(False, status.reason or "PodFailed", status.message or "the pod failed", name)
    if status.phase == "Succeeded":
        return PodOutcome(True, "Completed", "the pod succeeded", name, 0)
    return None
