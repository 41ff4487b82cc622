"""The local control plane behaves like a cluster: Job controller, kwok pod outcomes (and a test's own
kwok Stage steering single Tasks), GC, logs."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.integration


def job_body(name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
             owner: dict[str, Any] | None = None, init_container: bool = False) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [{"name": "agent", "image": "example.invalid/agent:test", "command": ["true"]}],
    }
    if init_container:
        pod_spec["initContainers"] = [{"name": "setup", "image": "example.invalid/setup:test"}]
    metadata: dict[str, Any] = {"name": name}
    if owner:
        metadata["ownerReferences"] = [owner]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 0,
            "template": {"metadata": {"labels": labels or {}, "annotations": annotations or {}}, "spec": pod_spec},
        },
    }


def job_condition(batch: client.BatchV1Api, namespace: str, name: str) -> str | None:
    """The type of the Job's first terminal condition that is True (Complete/Failed), else None."""
    job = batch.read_namespaced_job(name, namespace)
    for cond in job.status.conditions or []:
        if cond.type in ("Complete", "Failed") and cond.status == "True":
            return cond.type
    return None


def job_pods(core: client.CoreV1Api, namespace: str, job: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job}").items


def gone(read, *args) -> bool:
    try:
        read(*args)
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


@pytest.fixture
def batch(cluster) -> client.BatchV1Api:
    return client.BatchV1Api(cluster.api_client)


@pytest.fixture
def core(cluster) -> client.CoreV1Api:
    return client.CoreV1Api(cluster.api_client)


def test_server_is_kubernetes_1_37(cluster, kubectl) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.37."), version
    assert client.VersionApi(cluster.api_client).get_code().git_version.startswith("v1.37.")


def test_job_pod_completes(namespace, batch, core, wait_for) -> None:
    batch.create_namespaced_job(namespace, job_body("ok", init_container=True))

    assert wait_for(lambda: job_condition(batch, namespace, "ok"), what="Job ok to finish") == "Complete"
    job = batch.read_namespaced_job("ok", namespace)
    assert job.status.succeeded == 1 and not job.status.failed
    [pod] = job_pods(core, namespace, "ok")
    assert pod.status.phase == "Succeeded"
    assert pod.spec.node_name == "kwok-node-0"
    [init] = pod.status.init_container_statuses
    assert init.state.terminated.exit_code == 0 and init.state.terminated.reason == "Completed"
    [main] = pod.status.container_statuses
    assert main.state.terminated.exit_code == 0 and main.state.terminated.reason == "Completed"


def test_job_pod_fails_with_exit_code(namespace, batch, core, wait_for) -> None:
    body = job_body("bad", labels={"kubetask.io/test-outcome": "fail"},
                    annotations={"kubetask.io/test-exit-code": "3"})
    batch.create_namespaced_job(namespace, body)

    assert wait_for(lambda: job_condition(batch, namespace, "bad"), what="Job bad to finish") == "Failed"
    assert batch.read_namespaced_job("bad", namespace).status.failed == 1
    [pod] = job_pods(core, namespace, "bad")
    assert pod.status.phase == "Failed"
    [main] = pod.status.container_statuses
    assert main.state.terminated.exit_code == 3
    assert main.state.terminated.reason == "Error"


def test_duration_annotation_and_hang(namespace, batch, core, wait_for) -> None:
    batch.create_namespaced_job(namespace, job_body("slow", annotations={"kubetask.io/test-duration-ms": "3000"}))
    batch.create_namespaced_job(namespace, job_body("stuck", labels={"kubetask.io/test-outcome": "hang"}))

    assert wait_for(lambda: job_condition(batch, namespace, "slow"), what="Job slow to finish") == "Complete"
    [main] = job_pods(core, namespace, "slow")[0].status.container_statuses
    ran = main.state.terminated.finished_at - main.state.terminated.started_at
    assert ran >= timedelta(seconds=2), ran  # timestamps have second resolution

    # "stuck" started with "slow"; give it well past the 1 s default, then it must still be running.
    [pod] = wait_for(lambda: [p for p in job_pods(core, namespace, "stuck") if p.status.phase == "Running"],
                     what="pod of Job stuck to run")
    time.sleep(max(0.0, 2.5 - (time.time() - pod.status.start_time.timestamp())))
    [pod] = job_pods(core, namespace, "stuck")
    assert pod.status.phase == "Running"
    assert job_condition(batch, namespace, "stuck") is None


def test_a_tests_own_stage_steers_the_pods_of_single_tasks(namespace, batch, core, wait_for, steer) -> None:
    """A Stage created now (kwok started long ago) labels the pods of Task b's first attempt: that pod
    fails with exit code 4; b's second attempt and Task a, unsteered, complete."""
    steer(["b"], {"kubetask.io/test-outcome": "fail", "kubetask.io/test-exit-code": "4"}, attempts=[1])
    for job, task, attempt in (("a-1", "a", "1"), ("b-1", "b", "1"), ("b-2", "b", "2")):
        batch.create_namespaced_job(namespace, job_body(job, labels={"kubetask.io/task": task, "kubetask.io/attempt": attempt}))

    def finished():
        outcomes = {j: job_condition(batch, namespace, j) for j in ("a-1", "b-1", "b-2")}
        return all(outcomes.values()) and outcomes

    outcomes = wait_for(finished, what="the three Jobs to finish")
    assert outcomes == {"a-1": "Complete", "b-1": "Failed", "b-2": "Complete"}
    [pod] = job_pods(core, namespace, "b-1")
    assert pod.metadata.labels["kubetask.io/test-outcome"] == "fail"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 4
    for job in ("a-1", "b-2"):
        [pod] = job_pods(core, namespace, job)
        assert "kubetask.io/test-outcome" not in pod.metadata.labels


def test_owner_deletion_garbage_collects_job(namespace, batch, core, wait_for) -> None:
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}, "data": {"k": "v"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    batch.create_namespaced_job(namespace, job_body("owned", labels={"kubetask.io/test-outcome": "hang"}, owner=ref))
    wait_for(lambda: [p for p in job_pods(core, namespace, "owned") if p.status.phase == "Running"],
             what="pod of Job owned to run")

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    wait_for(lambda: gone(batch.read_namespaced_job, "owned", namespace), what="Job owned to be collected")
    # The Job's pods go too: GC deletes them, kwok completes the deletion, the Job controller drops its finalizer.
    wait_for(lambda: not job_pods(core, namespace, "owned"), what="pods of Job owned to be deleted")


def test_pod_logs_are_served(namespace, batch, core, kubectl, wait_for) -> None:
    batch.create_namespaced_job(namespace, job_body("logs"))
    wait_for(lambda: job_condition(batch, namespace, "logs"), what="Job logs to finish")
    [pod] = job_pods(core, namespace, "logs")

    text = core.read_namespaced_pod_log(pod.metadata.name, namespace, container="agent")
    assert "=== Task Content ===" in text
    assert "=== Task Completed ===" in text
    assert "=== Task Content ===" in kubectl("logs", "-n", namespace, "job/logs").stdout
