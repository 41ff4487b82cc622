"""The production engine path: Dagster's K8sRunLauncher starts each run worker as a pod of the
project's image on the real node, the instance lives in PostgreSQL on 127.0.0.1, and the launcher is
configured from deploy/dagster/values.yaml (what a platform team installs), changed only where the
local cluster differs: host networking, 127.0.0.1, locally built images, a kubeconfig for the daemon.

The session's admin bridges are paused while this module runs: its bridge submits to this Dagster.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import kt_stack
import pytest
import yaml
from kt_helpers import (
    ON_THE_REAL_NODE,
    api_server_port,
    condition,
    get,
    inline,
    opt_in,
    real_workspace,
    task,
    tasks_of,
    wait_batchrun,
    wait_phase,
)

from benchmarks.postgres import dagster_storage_yaml, postgres_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VALUES = ROOT / "deploy" / "dagster" / "values.yaml"
PROJECT_IMAGE = "localhost/kubetask-dagster:dev"
WORKER_NS, WORKER_SA = "dagster", "kubetask-run-worker"


def launcher_config(cluster, api_port: str) -> dict:
    """values.yaml's run launcher config, as the Helm chart writes it into dagster.yaml, with the local changes."""
    launcher = yaml.safe_load(VALUES.read_text())["runLauncher"]["config"]["customRunLauncher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    config = copy.deepcopy(launcher["config"])
    assert (config["job_namespace"], config["service_account_name"]) == (WORKER_NS, WORKER_SA)
    run_k8s = config["run_k8s_config"]
    run_k8s["pod_spec_config"] = {**run_k8s.get("pod_spec_config", {}), "hostNetwork": True, **ON_THE_REAL_NODE}
    del config["postgres_password_secret"]  # the local Postgres takes no password
    config.update({
        "image_pull_policy": "Never",  # values: IfNotPresent; here no registry has the image
        "load_incluster_config": False,  # values: true; the daemon runs on the host here
        "kubeconfig_file": cluster.kubeconfig,
        "env_vars": [
            *config["env_vars"],
            # in-cluster config for the run worker's own ServiceAccount token, kube-apiserver on loopback
            "KUBERNETES_SERVICE_HOST=127.0.0.1", f"KUBERNETES_SERVICE_PORT={api_port}",
            "KUBETASK_AGENT_HOST_NETWORK=true", "KUBETASK_GIT_IMAGE=localhost/kubetask-git:dev",
        ],
    })
    return config


@pytest.fixture(scope="module")
def production(cluster, crds):
    """Postgres, a Dagster with K8sRunLauncher, and a bridge submitting to it."""
    kubectl = cluster.kubectl
    if kubectl("get", "node", "localhost", check=False).returncode != 0:
        pytest.fail("the session cluster has no real node (see deploy/local/cluster start's log)")
    kubectl("apply", "-k", str(ROOT / "deploy" / "rbac"))
    # not under pytest's 0700 base: the server runs as its own user and must reach its directory
    root = Path(tempfile.mkdtemp(prefix="kubetask-k8s-launcher-"))
    paused = kt_stack.running_bridges(cluster)
    for b in paused:
        b.stop()
    with postgres_server(root) as url:
        instance = {
            "telemetry": {"enabled": False},
            "run_coordinator": {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator",
                                "config": {"max_concurrent_runs": 10, "dequeue_interval_seconds": 1}},
            "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": launcher_config(cluster, api_server_port(cluster.kubeconfig))},
            "run_monitoring": {"enabled": True, "poll_interval_seconds": 5},
            **yaml.safe_load(dagster_storage_yaml(url)),
        }
        (root / "instance.yaml").write_text(yaml.safe_dump(instance))
        kubectl("apply", "-n", WORKER_NS, "-f", "-", input=kubectl(
            "create", "configmap", "dagster-instance", "-n", WORKER_NS, f"--from-file=dagster.yaml={root / 'instance.yaml'}",
            "--dry-run=client", "-o", "yaml").stdout)
        home = root / "dagster"
        home.mkdir()
        env = {**os.environ, "DAGSTER_HOME": str(home), "KUBECONFIG": cluster.kubeconfig,
               "KUBETASK_DAGSTER_INSTANCE": str(root / "instance.yaml"),
               "DAGSTER_CURRENT_IMAGE": PROJECT_IMAGE}  # the code location's image: the run workers' image
        bridge = None
        try:
            out = subprocess.run([str(kt_stack.DAGSTER_SCRIPT), "start"], env=env, check=True, capture_output=True, text=True,
                                 timeout=300).stdout
            values = dict(shlex.split(line)[1].split("=", 1) for line in out.splitlines() if line.startswith("export "))
            dagster = kt_stack.Dagster(url=values["DAGSTER_URL"], home=str(home), env=env)
            bridge = kt_stack.Bridge(env={**os.environ, "KUBECONFIG": cluster.kubeconfig}, log_path=home / "bridge.log",
                                     args=["--dagster-url", dagster.url, "--health-bind", f"127.0.0.1:{kt_stack._free_port()}",
                                           "--drift-interval", "2", "--run-worker", f"system:serviceaccount:{WORKER_NS}:{WORKER_SA}",
                                           # a burst applied in one kubectl apply is one pool for certain
                                           # (a lone Task still gets a run of its own, a second later)
                                           "--pool-min-waiting", "1", "--pool-window", "1"])
            bridge.start()
            yield dagster
        finally:
            if bridge is not None:
                bridge.stop()
            subprocess.run([str(kt_stack.DAGSTER_SCRIPT), "stop"], env=env, check=False, capture_output=True, timeout=120)
            kubectl("delete", "jobs", "-n", WORKER_NS, "-l", "app.kubernetes.io/component=run_worker", "--wait=false", check=False)
            for b in paused:
                b.start()
            print(f"K8sRunLauncher stack logs: {home}")
    shutil.rmtree(root, ignore_errors=True)


def run_worker_pod(kubectl, run_id: str) -> dict:
    pods = json.loads(kubectl("get", "pods", "-n", WORKER_NS, "-l", f"dagster/run-id={run_id}", "-o", "json").stdout)["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


@pytest.fixture
def tenant(kubectl, namespace):
    """The test's namespace, opted in as an operator does: the run worker pods' ServiceAccount may work there."""
    opt_in(kubectl, namespace)
    return namespace


def test_a_task_runs_in_a_run_worker_pod_on_the_real_node(production, kubectl, wait_for, tenant):
    namespace = tenant
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([
        real_workspace(), task("prod", [inline("/workspace/task.md", "through K8sRunLauncher")])]))
    obj = wait_phase(kubectl, wait_for, namespace, "prod", {"Completed", "Failed"}, timeout=240)
    assert obj["status"]["phase"] == "Completed", obj["status"].get("message")
    worker = run_worker_pod(kubectl, obj["status"]["dagsterRunId"])
    assert worker["spec"]["nodeName"] == "localhost" and worker["spec"]["hostNetwork"] is True
    assert worker["spec"]["serviceAccountName"] == WORKER_SA
    assert worker["spec"]["containers"][0]["image"] == PROJECT_IMAGE
    run_id = obj["status"]["dagsterRunId"]
    wait_for(lambda: run_worker_pod(kubectl, run_id)["status"]["phase"] == "Succeeded", timeout=60,
             what="the run worker pod to end")  # it ends after the Task's status is written
    log = kubectl("logs", "-n", namespace, obj["status"]["podName"], "-c", "agent").stdout
    assert "--- File: /workspace/task.md ---\nthrough K8sRunLauncher\n" in log
    assert production.run(obj["status"]["dagsterRunId"])["status"] == "SUCCESS"


def test_a_batchrun_runs_in_one_run_worker_pod(production, kubectl, wait_for, tenant):
    namespace = tenant
    batchrun = {"apiVersion": "kubetask.io/v1alpha1", "kind": "BatchRun", "metadata": {"name": "prod-batch"},
                "spec": {"batchSpec": {"commonContext": [inline("/workspace/task.md", "batch")],
                                       "variableContexts": [[inline("/workspace/item.md", f"item {i}")] for i in range(2)]}}}
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([real_workspace(), batchrun]))
    run = wait_batchrun(kubectl, wait_for, namespace, "prod-batch", {"Completed", "Failed"}, timeout=300)
    assert run["status"]["phase"] == "Completed", run["status"]
    tasks = tasks_of(kubectl, namespace, "prod-batch")
    assert {t["status"]["dagsterRunId"] for t in tasks.values()} == {run["status"]["dagsterRunId"]}
    worker = run_worker_pod(kubectl, run["status"]["dagsterRunId"])
    assert worker["spec"]["nodeName"] == "localhost"
    wait_for(lambda: condition(get(kubectl, namespace, "batchrun", "prod-batch"), "Succeeded")["status"] == "True",
             timeout=30, what="the BatchRun finalized")


def test_a_burst_of_standalone_tasks_runs_in_one_run_worker_pod(production, kubectl, wait_for, tenant):
    namespace = tenant
    names = [f"pooled-{i}" for i in range(3)]
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([
        real_workspace(), *(task(n, [inline("/workspace/task.md", f"pooled {n}")]) for n in names)]))
    done = {n: wait_phase(kubectl, wait_for, namespace, n, {"Completed", "Failed"}, timeout=300) for n in names}
    assert {o["status"]["phase"] for o in done.values()} == {"Completed"}, {n: o["status"] for n, o in done.items()}
    (run_id,) = {o["status"]["dagsterRunId"] for o in done.values()}
    tags = {t["key"]: t["value"] for t in production.run(run_id)["tags"]}
    assert tags["kubetask.io/kind"] == "TaskPool"
    worker = run_worker_pod(kubectl, run_id)  # one pod for the three agents
    assert worker["spec"]["nodeName"] == "localhost" and worker["spec"]["serviceAccountName"] == WORKER_SA
    for name, obj in done.items():
        log = kubectl("logs", "-n", namespace, obj["status"]["podName"], "-c", "agent").stdout
        assert f"--- File: /workspace/task.md ---\npooled {name}\n" in log


# What anyone who reaches a webserver could ask of the run launcher, each the field that gives a pod
# the run workers' rights with the attacker's code or more than they have.
HOSTILE_RUN_TAGS = {
    "another-image": ({"dagster-k8s/config": {"container_config": {"image": "attacker.invalid/miner:latest",
                                                                    "command": ["sh", "-c", "cat /var/run/secrets/*"]}}},
                      "container_config.image"),
    "the-node": ({"dagster-k8s/config": {"pod_spec_config": {"host_pid": True, "service_account_name": "default",
                                                              "volumes": [{"name": "root", "host_path": {"path": "/"}}]}}},
                 "pod_spec_config.host_pid"),
    "more-resources": ({"dagster-k8s/resource_requirements": {"requests": {"cpu": "64", "memory": "512Gi"}}},
                       "container_config.resources"),
}


def launch_errors(dagster, run_id: str) -> str:
    data = dagster.graphql(
        """query($id: ID!) { logsForRun(runId: $id) { __typename ... on EventConnection { events { __typename
             ... on MessageEvent { message } ... on EngineEvent { error { message } } } } } }""", {"id": run_id})
    return json.dumps(data)


@pytest.mark.parametrize("attack", HOSTILE_RUN_TAGS, ids=list(HOSTILE_RUN_TAGS))
def test_a_run_tag_cannot_choose_the_run_workers_pod(production, kubectl, wait_for, tenant, attack):
    """A launchRun straight to the webserver, as an agent that reached it would send: the launcher refuses
    the tagged pod config, the run fails where Dagster's UI shows it, and no run worker Job exists."""
    from crd_bridge.dagster.client import DagsterClient
    from kubetask.domain.runs import TASK_JOB

    tags, field = HOSTILE_RUN_TAGS[attack]
    ref = {"namespace": tenant, "name": "no-such-task", "uid": "00000000-0000-0000-0000-000000000000", "generation": 1}
    run_id = DagsterClient(production.url).submit_run(
        TASK_JOB, {"ops": {"prepare_task": {"config": ref}}}, {k: json.dumps(v) for k, v in tags.items()})
    final = {"FAILURE", "SUCCESS", "CANCELED", "STARTED"}
    status = wait_for(lambda: (s := production.run(run_id)["status"]) in final and s,
                      timeout=90, what="the tagged run to leave the queue")
    assert status == "FAILURE"
    errors = launch_errors(production, run_id)
    assert "violated the allowed list" in errors and field in errors, errors[:2000]
    jobs = json.loads(kubectl("get", "jobs", "-A", "-l", f"dagster/run-id={run_id}", "-o", "json").stdout)["items"]
    assert jobs == []
