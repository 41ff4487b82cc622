"""Faults on purpose, on the real stack: processes killed mid-run, kube-apiserver restarted, Dagster's
webserver down while Tasks arrive, and ten clients racing to apply one Task. Each ends with every
status converged, exact counters, and no Task run twice (Jobs counted per Task)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import kt_stack
import pytest
import yaml
from kt_helpers import (
    TERMINAL,
    apply,
    batchrun,
    condition,
    event_reasons,
    get,
    jobs,
    phase,
    run_worker_pids,
    task,
    tasks_of,
    wait_batchrun,
    wait_phase,
    workspace,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = ROOT / "deploy" / "local" / "cluster"


def job_names(kubectl, namespace: str) -> list[str]:
    return sorted(j["metadata"]["name"] for j in jobs(kubectl, namespace) if not j["metadata"].get("deletionTimestamp"))


def all_completed(n: int) -> dict[str, int]:
    return {"total": n, "pending": 0, "queued": 0, "running": 0, "completed": n, "failed": 0, "stopped": 0}


def test_bridge_sigkilled_mid_batchrun_of_50_tasks_converges_without_duplicates(kubectl, wait_for, namespace, bridge, dagster):
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-duration-ms": "2000"}),
          batchrun("fifty", n=50, parallelism=10))
    wait_for(lambda: len(jobs(kubectl, namespace)) >= 5, timeout=120, interval=0.3, what="the first Jobs")
    bridge.kill()
    time.sleep(3)  # Tasks go on ending while nobody writes the BatchRun's progress
    bridge.start()
    obj = wait_batchrun(kubectl, wait_for, namespace, "fifty", TERMINAL, timeout=300)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    assert obj["status"]["progress"] == all_completed(50)
    assert sorted(phase(t) for t in tasks_of(kubectl, namespace, "fifty").values()) == ["Completed"] * 50
    assert job_names(kubectl, namespace) == sorted(f"fifty-task-{i}-job-1" for i in range(50))
    assert len(dagster.runs_with_tags({"kubetask.io/uid": obj["metadata"]["uid"]})) == 1


def test_run_worker_killed_mid_batchrun_fails_its_running_tasks_and_a_rerun_completes_them(kubectl, wait_for, namespace, bridge, dagster):
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-outcome": "hang"}), batchrun("doomed", n=3, parallelism=3))
    wait_for(lambda: [phase(t) for t in tasks_of(kubectl, namespace, "doomed").values()] == ["Running"] * 3,
             timeout=120, interval=0.3, what="3 running Tasks")
    pids = wait_for(lambda: run_worker_pids(dagster.home), timeout=10, what="the run worker")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    obj = wait_batchrun(kubectl, wait_for, namespace, "doomed", TERMINAL, timeout=120)
    assert obj["status"]["phase"] == "Failed"
    for t in tasks_of(kubectl, namespace, "doomed").values():
        assert phase(t) == "Failed" and condition(t, "Succeeded")["reason"] == "RunFailed", t["status"]
    assert obj["status"]["progress"]["failed"] == 3

    apply(kubectl, namespace, workspace())  # the cause is gone: agents complete now
    kubectl("annotate", "batchrun", "doomed", "-n", namespace, "kubetask.io/rerun=failed")
    obj = wait_batchrun(kubectl, wait_for, namespace, "doomed", {"Completed"}, timeout=180)
    assert obj["status"]["progress"] == all_completed(3)
    for t in tasks_of(kubectl, namespace, "doomed").values():
        assert phase(t) == "Completed" and t["status"]["attempt"] == 2
    # the rerun deleted the Jobs the dead worker left hanging; one Job per Task remains
    wait_for(lambda: job_names(kubectl, namespace) == sorted(f"doomed-task-{i}-job-2" for i in range(3)),
             timeout=60, interval=0.5, what="only the rerun's Jobs")


def test_kube_apiserver_restart_mid_batchrun_loses_no_status(cluster, kubectl, wait_for, namespace, bridge, dagster):
    if cluster.run_dir is None:
        pytest.skip("restarting kube-apiserver needs the local control plane")
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-duration-ms": "3000"}), batchrun("steady", n=10, parallelism=5))
    wait_for(lambda: len(jobs(kubectl, namespace)) >= 3, timeout=120, interval=0.3, what="the first Jobs")
    subprocess.run([str(CLUSTER_SCRIPT), "restart-apiserver"], env=cluster.env, check=True, capture_output=True, timeout=180)
    obj = wait_batchrun(kubectl, wait_for, namespace, "steady", TERMINAL, timeout=300)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    assert obj["status"]["progress"] == all_completed(10)
    assert job_names(kubectl, namespace) == sorted(f"steady-task-{i}-job-1" for i in range(10))
    # the bridge's watches came back: a Task applied after the restart runs too
    apply(kubectl, namespace, task("after-restart"))
    assert wait_phase(kubectl, wait_for, namespace, "after-restart", TERMINAL, timeout=120)["status"]["phase"] == "Completed"
    assert bridge.proc.poll() is None


def test_tasks_applied_while_dagsters_webserver_is_down_run_once_it_is_back(kubectl, wait_for, namespace, bridge, dagster):
    def webserver(action: str) -> None:
        subprocess.run([str(kt_stack.DAGSTER_SCRIPT), action, "webserver"], env=dagster.env, check=True, capture_output=True, timeout=300)

    names = [f"patient-{i}" for i in range(5)]
    webserver("stop")
    try:
        apply(kubectl, namespace, workspace(), *[task(n) for n in names])
        wait_for(lambda: all("DagsterUnavailable" in event_reasons(kubectl, namespace, n) for n in names),
                 timeout=60, interval=0.5, what="every Task saying Dagster is unreachable")
        for n in names:
            obj = get(kubectl, namespace, "task", n)
            assert phase(obj) == "Pending" and condition(obj, "Ready")["reason"] == "DagsterUnavailable", obj.get("status")
        assert bridge.proc.poll() is None
    finally:
        webserver("start")
    for n in names:
        obj = wait_phase(kubectl, wait_for, namespace, n, TERMINAL, timeout=180)
        assert obj["status"]["phase"] == "Completed", obj["status"]
        assert len(dagster.runs_with_tags({"kubetask.io/uid": obj["metadata"]["uid"]})) == 1
    assert job_names(kubectl, namespace) == sorted(f"{n}-job-1" for n in names)


def test_the_same_task_applied_by_ten_clients_at_once_runs_once(kubectl, wait_for, namespace, bridge, dagster):
    apply(kubectl, namespace, workspace())
    body = yaml.safe_dump(task("contended"))
    barrier = threading.Barrier(10)
    results: list[tuple[int, str]] = []

    def client() -> None:
        barrier.wait()
        result = kubectl("apply", "-n", namespace, "-f", "-", input=body, check=False)
        results.append((result.returncode, result.stderr))

    threads = [threading.Thread(target=client) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # kubectl apply is get-then-create: a client that loses the race is told AlreadyExists, nothing worse
    assert len(results) == 10 and any(rc == 0 for rc, _ in results)
    assert all(rc == 0 or "AlreadyExists" in err for rc, err in results), results
    obj = wait_phase(kubectl, wait_for, namespace, "contended", TERMINAL, timeout=120)
    assert obj["status"]["phase"] == "Completed"
    assert len(dagster.runs_with_tags({"kubetask.io/uid": obj["metadata"]["uid"]})) == 1
    assert job_names(kubectl, namespace) == ["contended-job-1"]
