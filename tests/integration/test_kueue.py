"""Agent Jobs queued by Kueue (WorkspaceConfig queueName): created suspended and labelled with the
LocalQueue, the Task Queued with reason AdmissionPending until the Job is resumed, its timeout counting
from admission, and an eviction (the Job suspended again while it runs) reported and survived without
spending an attempt. The tests resume and suspend the Jobs as Kueue's controller does (its spec.suspend)."""

from __future__ import annotations

import json
import secrets
import time

import pytest
from kt_helpers import apply, condition, event_reasons, get, jobs, task, wait_phase, workspace

pytestmark = pytest.mark.integration


def suspend(kubectl, namespace: str, job: str, value: bool) -> None:
    kubectl("patch", "job", job, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": {"suspend": value}}))


def pending_admission(kubectl, wait_for, namespace: str, name: str, evicted: bool = False) -> dict:
    def waiting():
        t = get(kubectl, namespace, "task", name)
        ready = t and t.get("status", {}).get("phase") == "Queued" and condition(t, "Ready")
        return t if ready and ready["reason"] == "AdmissionPending" and (not evicted or "evicted" in ready["message"]) else None

    return wait_for(waiting, timeout=60, interval=0.3, what=f"task {name} Queued/AdmissionPending")


@pytest.fixture
def cluster_scoped(kubectl):
    """A PriorityClass and a RuntimeClass of the test's own (the API server refuses pods naming missing ones)."""
    suffix = secrets.token_hex(3)
    names = {"priority": f"kubetask-test-low-{suffix}", "runtime": f"kubetask-test-gvisor-{suffix}"}
    apply(kubectl, "default",
          {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": names["priority"]},
           "value": 10},
          {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": names["runtime"]}, "handler": "runsc"})
    yield names
    kubectl("delete", "priorityclass", names["priority"], "--ignore-not-found", check=False)
    kubectl("delete", "runtimeclass", names["runtime"], "--ignore-not-found", check=False)


def test_a_queued_job_waits_suspended_for_admission_and_its_timeout_counts_from_it(
    kubectl, wait_for, namespace, bridge, cluster_scoped
):
    apply(kubectl, namespace,
          workspace(queueName="agents", priorityClassName=cluster_scoped["priority"],
                    runtimeClassName=cluster_scoped["runtime"], jobLabels={"team": "a"},
                    jobAnnotations={"cost-center": "42"}),
          task("admitted", timeout="8s"))
    waiting = pending_admission(kubectl, wait_for, namespace, "admitted")
    assert "LocalQueue agents" in condition(waiting, "Ready")["message"]
    job = get(kubectl, namespace, "job", "admitted-job-1")
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "agents"
    assert job["metadata"]["labels"]["team"] == "a" and job["metadata"]["annotations"]["cost-center"] == "42"
    template = job["spec"]["template"]["spec"]
    assert (template["priorityClassName"], template["runtimeClassName"]) == (cluster_scoped["priority"], cluster_scoped["runtime"])

    time.sleep(10)  # longer than the Task's timeout: waiting for admission does not count
    assert get(kubectl, namespace, "task", "admitted")["status"]["phase"] == "Queued"
    assert not json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]  # nothing ran
    suspend(kubectl, namespace, "admitted-job-1", False)  # Kueue admits it
    obj = wait_phase(kubectl, wait_for, namespace, "admitted", {"Completed", "Failed"}, timeout=60)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    assert obj["status"]["attempt"] == 1 and "Admitted" in event_reasons(kubectl, namespace, "admitted")


def test_an_evicted_job_goes_back_to_admission_and_completes_without_spending_an_attempt(
    kubectl, wait_for, namespace, bridge, steer
):
    steer(["evicted"], {"kubetask.io/test-duration-ms": "6000"})
    apply(kubectl, namespace, workspace(queueName="agents"), task("evicted"))
    pending_admission(kubectl, wait_for, namespace, "evicted")
    suspend(kubectl, namespace, "evicted-job-1", False)
    wait_for(lambda: (t := get(kubectl, namespace, "task", "evicted")) and t["status"].get("podName")
             and t["status"]["phase"] == "Running", timeout=30, what="the agent running")
    suspend(kubectl, namespace, "evicted-job-1", True)  # Kueue preempts it: the Job controller deletes its pod
    pending_admission(kubectl, wait_for, namespace, "evicted", evicted=True)
    assert "Evicted" in event_reasons(kubectl, namespace, "evicted")
    wait_for(lambda: not json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"],
             timeout=60, what="the evicted pod gone")
    suspend(kubectl, namespace, "evicted-job-1", False)  # admitted again
    obj = wait_phase(kubectl, wait_for, namespace, "evicted", {"Completed", "Failed"}, timeout=60)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    assert obj["status"]["attempt"] == 1 and [j["metadata"]["name"] for j in jobs(kubectl, namespace)] == ["evicted-job-1"]


def test_with_max_concurrent_tasks_an_admitted_pod_waits_behind_its_gate_for_a_slot(
    kubectl, wait_for, namespace, bridge, steer
):
    # One slot, two Tasks, both admitted at once: the first takes the slot and its pod's gate is lifted;
    # the second's pod exists but stays gated (unscheduled) until the first ends.
    steer(["first"], {"kubetask.io/test-duration-ms": "5000"})
    apply(kubectl, namespace, workspace(queueName="agents", maxConcurrentTasks=1), task("first"))
    pending_admission(kubectl, wait_for, namespace, "first")
    apply(kubectl, namespace, task("second"))
    pending_admission(kubectl, wait_for, namespace, "second")  # waiting for Kueue, it holds no slot
    suspend(kubectl, namespace, "first-job-1", False)
    wait_phase(kubectl, wait_for, namespace, "first", {"Running"}, timeout=30)
    suspend(kubectl, namespace, "second-job-1", False)

    def gated() -> dict | None:
        pods = json.loads(kubectl("get", "pods", "-n", namespace, "-l", "kubetask.io/task=second", "-o", "json").stdout)["items"]
        return pods[0] if pods and pods[0]["spec"].get("schedulingGates") else None

    pod = wait_for(gated, timeout=30, what="the second Task's pod, gated")
    assert pod["spec"]["schedulingGates"] == [{"name": "kubetask.io/slot"}] and not pod["spec"].get("nodeName")
    assert condition(get(kubectl, namespace, "task", "second"), "Ready")["reason"] == "WorkspaceLimit"
    assert get(kubectl, namespace, "task", "first")["status"]["phase"] == "Running"
    for name in ("first", "second"):
        obj = wait_phase(kubectl, wait_for, namespace, name, {"Completed", "Failed"}, timeout=90)
        assert obj["status"]["phase"] == "Completed", obj["status"]
    first_end = get(kubectl, namespace, "task", "first")["status"]["completionTime"]
    second_start = json.loads(kubectl("get", "pods", "-n", namespace, "-l", "kubetask.io/task=second", "-o", "json").stdout)
    started = [p["status"].get("startTime") for p in second_start["items"]]
    assert started and all(s is None or s >= first_end[:19] for s in started), (started, first_end)
