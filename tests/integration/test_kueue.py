"""Agent Jobs queued by Kueue (WorkspaceConfig queueName): created suspended and labelled with the
LocalQueue, the Task Queued with reason AdmissionPending until the Job is resumed, its timeout counting
from admission, and an eviction (the Job suspended again while it runs) reported and survived without
spending an attempt. The first tests resume and suspend the Jobs as Kueue's controller does (its
spec.suspend); the last ones run Kueue's own controller, built from its Go module, against the local
control plane: a LocalQueue on a held ClusterQueue keeps the Task AdmissionPending, releasing it admits
the Job, and a drained ClusterQueue evicts a running one."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import kt_stack
import pytest
import yaml
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


# --- Kueue's own controller ------------------------------------------------------------------------

CLUSTER_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local" / "cluster"
KUEUE_NS = "kueue-system"
CONVERTED = ("localqueues", "clusterqueues", "workloads", "cohorts", "multikueueclusters")


def kueue_crds(directory: Path, webhook_port: int) -> list[dict]:
    """Kueue's CRDs as its release installs them: the five its certificate rotator injects a CA into
    carry a conversion webhook (here Kueue's own server on 127.0.0.1; every client here speaks v1beta2,
    so the API server never calls it)."""
    crds = [yaml.safe_load(f.read_text()) for f in sorted(directory.glob("*.yaml"))]
    for crd in crds:
        if crd["spec"]["names"]["plural"] in CONVERTED:
            crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                "conversionReviewVersions": ["v1"],
                "clientConfig": {"url": f"https://127.0.0.1:{webhook_port}/convert"}}}
    return crds


def mount_certificates(kubectl, directory: Path) -> None:
    """What the kubelet does for Kueue's pod: its rotator writes the webhook certificate into a Secret and
    waits for the files to appear where that Secret would be mounted."""
    if (directory / "tls.crt").exists():
        return
    data = (get(kubectl, KUEUE_NS, "secret", "kueue-webhook-server-cert") or {}).get("data") or {}
    if {"tls.crt", "tls.key"} <= set(data):
        directory.mkdir(mode=0o700, exist_ok=True)
        for key in ("tls.key", "ca.crt", "tls.crt"):  # tls.crt last: the rotator waits for it
            if key in data:
                (directory / key).write_bytes(base64.b64decode(data[key]))


@pytest.fixture(scope="module")
def kueue(cluster):
    """Kueue's controller manager on the host, on 127.0.0.1 only, watching batch Jobs; removed at the end."""
    binary, crd_dir = subprocess.run([str(CLUSTER_SCRIPT), "kueue"], check=True, capture_output=True,
                                     text=True).stdout.split()
    assert Path(binary).is_file(), f"{binary} is missing: deploy/local/cluster build makes it"
    kubectl = cluster.kubectl
    root = kt_stack._run_root() / f"kueue-{os.getpid()}"  # its pid file: .ci/run stops it if this session crashes
    root.mkdir()
    webhook = kt_stack._free_port()
    crds = kueue_crds(Path(crd_dir), webhook)
    kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(crds))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{c['metadata']['name']}" for c in crds))
    kubectl("create", "namespace", KUEUE_NS)
    kubectl("create", "secret", "generic", "kueue-webhook-server-cert", "-n", KUEUE_NS)
    health = kt_stack._free_port()
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration", "namespace": KUEUE_NS,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
        "metrics": {"bindAddress": f"127.0.0.1:{kt_stack._free_port()}"},
        "webhook": {"host": "127.0.0.1", "port": webhook, "certDir": str(root / "certs")},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": True, "webhookServiceName": "kueue-webhook-service",
                                   "webhookSecretName": "kueue-webhook-server-cert"},
        "integrations": {"frameworks": ["batch/job"]},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    log = open(root / "kueue.log", "w")
    # VisibilityOnDemand would serve its API on every address: off
    proc = subprocess.Popen([binary, f"--config={root / 'config.yaml'}", "--feature-gates=VisibilityOnDemand=false"],
                            env={"PATH": os.environ["PATH"], "KUBECONFIG": cluster.kubeconfig, "HOME": str(root)},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (root / "pid").write_text(f"{proc.pid} {binary}\n")
    try:
        deadline = time.monotonic() + 120
        while "Starting workers" not in (root / "kueue.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (root / "kueue.log").read_text()[-4000:]
            mount_certificates(kubectl, root / "certs")
            time.sleep(0.5)
        yield root
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        kubectl("delete", "namespace", KUEUE_NS, "--wait=false", check=False)
        kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", check=False,
                input=yaml.safe_dump_all([{"apiVersion": c["apiVersion"], "kind": c["kind"], "metadata": {"name": c["metadata"]["name"]}} for c in crds]))
        print(f"kueue log: {root / 'kueue.log'}")


@pytest.fixture
def queues(kubectl, namespace, kueue):
    """A ResourceFlavor and a ClusterQueue of the test's own, and the LocalQueue `agents` in its namespace."""
    name = f"kubetask-test-{secrets.token_hex(3)}"
    quota = [{"name": r, "nominalQuota": q} for r, q in (("cpu", "100"), ("memory", "100Gi"), ("ephemeral-storage", "100Gi"))]
    apply(kubectl, "default",
          {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": name}},
          {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": name},
           "spec": {"namespaceSelector": {}, "stopPolicy": "Hold", "resourceGroups": [{
               "coveredResources": [q["name"] for q in quota], "flavors": [{"name": name, "resources": quota}]}]}})
    apply(kubectl, namespace, {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue", "metadata": {"name": "agents"},
                               "spec": {"clusterQueue": name}})
    yield name
    kubectl("delete", "clusterqueue", name, "--ignore-not-found", "--wait=false", check=False)
    kubectl("delete", "resourceflavor", name, "--ignore-not-found", "--wait=false", check=False)


def stop_policy(kubectl, cluster_queue: str, policy: str) -> None:
    kubectl("patch", "clusterqueue", cluster_queue, "--type=merge", "-p", json.dumps({"spec": {"stopPolicy": policy}}))


def workload_of(kubectl, namespace: str, job: str) -> dict | None:
    items = json.loads(kubectl("get", "workloads.kueue.x-k8s.io", "-n", namespace, "-o", "json").stdout)["items"]
    owned = [w for w in items if any(o["kind"] == "Job" and o["name"] == job for o in w["metadata"].get("ownerReferences", []))]
    return owned[0] if owned else None


def test_kueues_controller_admits_the_queued_job_once_its_cluster_queue_opens(kubectl, wait_for, namespace, bridge, queues):
    apply(kubectl, namespace, workspace(queueName="agents"), task("by-kueue"))
    pending_admission(kubectl, wait_for, namespace, "by-kueue")
    workload = wait_for(lambda: workload_of(kubectl, namespace, "by-kueue-job-1"), timeout=30, what="Kueue's Workload")
    assert not any(c["type"] == "Admitted" and c["status"] == "True" for c in workload["status"].get("conditions", []))
    time.sleep(3)  # held: Kueue admits nothing, the Job stays suspended
    assert get(kubectl, namespace, "job", "by-kueue-job-1")["spec"]["suspend"] is True
    assert get(kubectl, namespace, "task", "by-kueue")["status"]["phase"] == "Queued"

    stop_policy(kubectl, queues, "None")  # Kueue admits the Workload and resumes the Job
    obj = wait_phase(kubectl, wait_for, namespace, "by-kueue", {"Completed", "Failed"}, timeout=90)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    assert "Admitted" in event_reasons(kubectl, namespace, "by-kueue")
    admitted = workload_of(kubectl, namespace, "by-kueue-job-1")["status"]
    assert admitted["admission"]["clusterQueue"] == queues, admitted


def test_a_job_kueue_evicts_is_reported_and_completes_once_readmitted(kubectl, wait_for, namespace, bridge, queues, steer):
    steer(["drained"], {"kubetask.io/test-duration-ms": "8000"})
    apply(kubectl, namespace, workspace(queueName="agents"), task("drained"))
    pending_admission(kubectl, wait_for, namespace, "drained")  # held: kwok has its steering Stage by now
    stop_policy(kubectl, queues, "None")
    wait_for(lambda: (t := get(kubectl, namespace, "task", "drained")) and t.get("status", {}).get("podName")
             and t["status"]["phase"] == "Running", timeout=60, what="the agent running")
    stop_policy(kubectl, queues, "HoldAndDrain")  # Kueue evicts what the ClusterQueue admitted
    pending_admission(kubectl, wait_for, namespace, "drained", evicted=True)
    assert "Evicted" in event_reasons(kubectl, namespace, "drained")
    assert get(kubectl, namespace, "job", "drained-job-1")["spec"]["suspend"] is True
    stop_policy(kubectl, queues, "None")
    obj = wait_phase(kubectl, wait_for, namespace, "drained", {"Completed", "Failed"}, timeout=120)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    assert obj["status"]["attempt"] == 1 and [j["metadata"]["name"] for j in jobs(kubectl, namespace)] == ["drained-job-1"]
