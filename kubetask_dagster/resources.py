"""The resources of the code location: the run worker's Kubernetes access, and an IO manager.

``KubeResource`` gives every op of a run worker one ``Kube`` adapter (one connection pool, one
informer per namespace), and keeps the worker's database connections open (``execution.connections``).

``RunStorageIOManager`` keeps step outputs in Dagster's own run storage, so that any run worker can read them.

A re-execution from failure loads the outputs of the steps it skips (``expand_batch``'s Task
references) from the parent run. The default IO manager keeps them on the run worker's local disk,
which a new run pod (K8sRunLauncher) cannot read; Dagster's run storage (SQLite locally, Postgres in
a deployment) is shared by every process of the instance. Outputs here are small JSON (references,
hashes, never context content).
"""

import json
import os
from functools import cached_property
from typing import Any

from dagster import (
    ConfigurableIOManager,
    ConfigurableResource,
    Failure,
    InitResourceContext,
    InputContext,
    OutputContext,
)

from kubetask.domain import batches, manifests
from kubetask.domain.addresses import AddressPolicy
from kubetask.kube.http import HttpFetcher
from kubetask_dagster.execution.connections import keep_connections_open
from kubetask_dagster.kube import Kube

KEY_PREFIX = "kubetask/io/"


class KubeResource(ConfigurableResource):
    """Kubernetes access of the run worker (in-cluster, or the kubeconfig in $KUBECONFIG)."""

    kubeconfig: str | None = None
    git_image: str = manifests.DEFAULT_GIT_IMAGE
    log_tail_lines: int = 50
    # The local real node runs pods on the host's network; a real cluster never needs it.
    agent_host_network: bool = False
    # RemoteFile fetches reach public addresses only, plus these (CIDRs or ip:port), minus the denied
    # CIDRs (the cluster's pod and Service networks, when they are public ones).
    remote_file_allow: list[str] = []
    remote_file_deny: list[str] = []
    # The most Tasks, and bytes of Tasks, one BatchRun may create.
    batch_max_tasks: int = batches.DEFAULT_MAX_TASKS
    batch_max_bytes: int = batches.DEFAULT_MAX_BYTES

    def setup_for_execution(self, context: InitResourceContext) -> None:
        # every op uses this resource, so it is set up once in each run worker, before the first step
        keep_connections_open(context.instance)

    @cached_property
    def api(self) -> Kube:
        policy = AddressPolicy.parse(self.remote_file_allow, self.remote_file_deny)
        return Kube(self.kubeconfig, HttpFetcher(policy))


def kube_resource_from_env() -> KubeResource:
    """The operator's settings of the run workers: KUBETASK_GIT_IMAGE, KUBETASK_AGENT_HOST_NETWORK=true,
    KUBETASK_REMOTE_FILE_ALLOW and _DENY (comma-separated CIDRs; ip:port entries allow one server)."""
    return KubeResource(
        git_image=os.environ.get("KUBETASK_GIT_IMAGE") or manifests.DEFAULT_GIT_IMAGE,
        agent_host_network=os.environ.get("KUBETASK_AGENT_HOST_NETWORK", "").lower() == "true",
        remote_file_allow=_listed("KUBETASK_REMOTE_FILE_ALLOW"),
        remote_file_deny=_listed("KUBETASK_REMOTE_FILE_DENY"),
        batch_max_tasks=int(os.environ.get("KUBETASK_BATCH_MAX_TASKS") or batches.DEFAULT_MAX_TASKS),
        batch_max_bytes=int(os.environ.get("KUBETASK_BATCH_MAX_BYTES") or batches.DEFAULT_MAX_BYTES),
    )


def _listed(variable: str) -> list[str]:
    return [item.strip() for item in os.environ.get(variable, "").split(",") if item.strip()]


def _key(identifier) -> str:
    return KEY_PREFIX + "/".join(identifier)


class RunStorageIOManager(ConfigurableIOManager):
    """Stores each output as JSON under ``kubetask/io/<run>/<step>/<output>[/<mapping key>]``."""

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        storage = context.step_context.instance.run_storage
        storage.set_cursor_values({_key(context.get_identifier()): json.dumps(obj)})

    def load_input(self, context: InputContext) -> Any:
        upstream = context.upstream_output
        assert upstream is not None
        key = _key(upstream.get_identifier())
        value = context.instance.run_storage.get_cursor_values({key}).get(key)
        if value is None:
            raise Failure(f"the output {key} of an earlier step is not in Dagster's run storage")
        return json.loads(value)
