"""Client configuration of every kubetask process: where the API server is, and how requests retry."""

from __future__ import annotations

import os

import kubernetes
import urllib3

CONNECTIONS_PER_PROCESS = 64  # steps of a BatchRun share one client: one connection each, no queueing


def api_retry_policy() -> urllib3.Retry:
    """How a request rides out an API server that restarts or sheds load (~85 s in all).

    Connection refused or dropped, 429 ("storage is (re)initializing") and 502/503/504 are retried
    with backoff 0, 1, 2, 4, 8, then 10 s, for every verb: a create is safe to repeat because every
    object kubetask creates has a fixed name (a repeat answers 409, which the callers adopt), and
    status writes are merge patches. Without this a restart of kube-apiserver failed every step that
    made a call during the ~10 s it was down."""
    return urllib3.Retry(
        total=12,
        backoff_factor=0.5,
        backoff_max=10,
        allowed_methods=None,
        status_forcelist=(429, 502, 503, 504),
        respect_retry_after_header=True,
        raise_on_status=False,
    )


def load_configuration(kubeconfig: str | None = None) -> kubernetes.client.Configuration:
    """The kubeconfig file when one is named, else in-cluster (service account) inside a pod, else
    $KUBECONFIG or ~/.kube/config."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    else:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return configuration


def install_run_worker_default(kubeconfig: str | None = None) -> None:
    """Make the process-wide default configuration a run worker's: ``load_configuration`` with a
    connection pool for every step of a BatchRun and ``api_retry_policy`` (dagster-k8s's client and
    the informers use the default)."""
    configuration = load_configuration(kubeconfig)
    configuration.connection_pool_maxsize = CONNECTIONS_PER_PROCESS
    configuration.retries = api_retry_policy()
    kubernetes.client.Configuration.set_default(configuration)
