"""Pooled runs on the real stack: standalone Tasks applied together run as the steps of one ``pool_job``
run, and each keeps its own step, status, stop, deletion, retries and rerun. The bridge here pools
from the first waiting Task and gathers for a second, so a burst applied in one ``kubectl apply`` is
one pool for certain (by default a pool opens at eight waiting Tasks and gathers for 0.1 s: fewer
Tasks get a run each, which starts sooner)."""

from __future__ import annotations

import subprocess

import kt_stack
import pytest
from kt_helpers import apply, condition, event_reasons, get, jobs, task, wait_phase, workspace

from crd_bridge.dagster.client import DagsterClient
from kubetask import vocabulary
from kubetask.domain import runs as contract

pytestmark = pytest.mark.integration

POOLING = ["--pool-min-waiting", "1", "--pool-window", "1"]
CRASH_MID_POOL = "tests.integration.crash_mid_pool"
TERMINAL = {"Completed", "Failed", "Stopped"}
HANG = {"kubetask.io/test-outcome": "hang"}


@pytest.fixture(scope="module")
def pooling(bridge):
    """The session's bridge, restarted with the pool settings above for this module."""
    saved = list(bridge.args)
    bridge.stop()
    bridge.args = saved + POOLING
    bridge.start()
    try:
        yield bridge
    finally:
        bridge.stop()
        bridge.args = saved
        bridge.start()


def step_key(obj: dict) -> str:
    return contract.pool_step_key(obj["metadata"]["name"], obj["metadata"]["uid"])


def pool_runs(dagster, namespace: str) -> list[dict]:
    return dagster.runs_with_tags({vocabulary.TAG_KIND: vocabulary.KIND_TASK_POOL, vocabulary.TAG_NAMESPACE: namespace})


def wait_all(kubectl, wait_for, namespace, names, phases, timeout=120) -> dict[str, dict]:
    return {n: wait_phase(kubectl, wait_for, namespace, n, phases, timeout=timeout) for n in names}


def test_a_burst_runs_as_one_pooled_run_with_a_step_and_a_partition_per_task(
    kubectl, wait_for, namespace, pooling, dagster
):
    names = [f"burst-{i}" for i in range(4)]
    apply(kubectl, namespace, workspace(), *(task(n) for n in names))
    done = wait_all(kubectl, wait_for, namespace, names, TERMINAL)
    assert {n: o["status"]["phase"] for n, o in done.items()} == dict.fromkeys(names, "Completed")
    run_ids = {o["status"]["dagsterRunId"] for o in done.values()}
    assert len(run_ids) == 1, (run_ids, pooling.log()[-6000:])
    (run_id,) = run_ids
    run = wait_for(lambda: (r := dagster.run(run_id))["status"] == "SUCCESS" and r, timeout=30)
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags[vocabulary.TAG_KIND] == vocabulary.KIND_TASK_POOL and tags[vocabulary.TAG_NAMESPACE] == namespace
    assert [r["runId"] for r in pool_runs(dagster, namespace)] == [run_id]
    steps = {s["stepKey"]: s["status"] for s in run["stepStats"]}
    for name, obj in done.items():
        assert steps[step_key(obj)] == "SUCCESS", steps
        assert obj["metadata"]["labels"][vocabulary.LABEL_POOL] == tags[vocabulary.TAG_POOL]
        assert obj["status"]["dagsterRunUrl"] == contract.step_url(f"{dagster.url}/runs/{run_id}", step_key(obj))
        assert obj["status"]["jobName"] == f"{name}-job-1"
        reasons = wait_for(lambda n=name: (r := event_reasons(kubectl, namespace, n)) and "Completed" in r and r,
                           timeout=10)
        assert {"RunSubmitted", "JobCreated", "Completed"} <= set(reasons)
    assert sorted(j["metadata"]["name"] for j in jobs(kubectl, namespace)) == [f"{n}-job-1" for n in names]
    data = dagster.graphql(
        """query($key: AssetKeyInput!) { assetOrError(assetKey: $key) { ... on Asset {
             assetMaterializations(limit: 20) { partition runId } } } }""",
        {"key": {"path": ["kubetask", namespace, "tasks"]}},
    )
    partitions = {m["partition"]: m["runId"] for m in data["assetOrError"]["assetMaterializations"]}
    assert partitions == dict.fromkeys(names, run_id)


def test_a_pooled_task_retries_in_its_own_step(kubectl, wait_for, namespace, pooling, dagster):
    labels = {"kubetask.io/test-succeed-attempt": "2", "kubetask.io/test-exit-code": "3"}
    retries = {"limit": 2, "backoff": {"initialDelay": "1s", "factor": 1}}
    names = [f"flaky-{i}" for i in range(3)]
    apply(kubectl, namespace, workspace(pod_labels=labels), *(task(n, retries=retries) for n in names))
    done = wait_all(kubectl, wait_for, namespace, names, TERMINAL, timeout=150)
    for obj in done.values():
        assert obj["status"]["phase"] == "Completed" and obj["status"]["attempt"] == 2, obj["status"]
    (run_id,) = {o["status"]["dagsterRunId"] for o in done.values()}
    assert len(pool_runs(dagster, namespace)) == 1
    run = wait_for(lambda: (r := dagster.run(run_id))["status"] == "SUCCESS" and r, timeout=30)
    attempts = {s["stepKey"]: len(s["attempts"]) for s in run["stepStats"]}
    assert all(attempts[step_key(o)] == 2 for o in done.values()), attempts
    assert sorted(j["metadata"]["name"] for j in jobs(kubectl, namespace)) == sorted(
        f"{n}-job-{a}" for n in names for a in (1, 2))


def test_stopping_or_deleting_one_pooled_task_leaves_the_others_running(
    kubectl, wait_for, namespace, pooling, dagster
):
    names = ["keep-a", "keep-b", "stop-me", "delete-me"]
    apply(kubectl, namespace, workspace(pod_labels=HANG), *(task(n) for n in names))
    running = wait_all(kubectl, wait_for, namespace, names, {"Running"}, timeout=90)
    (run_id,) = {o["status"]["dagsterRunId"] for o in running.values()}
    wait_for(lambda: len(jobs(kubectl, namespace)) == 4, timeout=30, what="four Jobs")

    kubectl("annotate", "task", "stop-me", "-n", namespace, "kubetask.io/stop=true")
    stopped = wait_phase(kubectl, wait_for, namespace, "stop-me", TERMINAL, timeout=60)
    assert stopped["status"]["phase"] == "Stopped", stopped["status"]
    assert condition(stopped, "Succeeded")["reason"] == vocabulary.STOP_REQUESTED
    wait_for(lambda: "stop-me-job-1" not in {j["metadata"]["name"] for j in jobs(kubectl, namespace)},
             timeout=30, what="the stopped Task's Job deleted")

    kubectl("delete", "task", "delete-me", "-n", namespace, "--wait=false")
    wait_for(lambda: "delete-me-job-1" not in {j["metadata"]["name"] for j in jobs(kubectl, namespace)},
             timeout=60, what="the deleted Task's Job gone")

    # its neighbours go on, in the same run, which nobody terminated
    assert dagster.run(run_id)["status"] == "STARTED"
    for name in ("keep-a", "keep-b"):
        assert get(kubectl, namespace, "task", name)["status"]["phase"] == "Running"
    assert sorted(j["metadata"]["name"] for j in jobs(kubectl, namespace)) == ["keep-a-job-1", "keep-b-job-1"]
    assert "RUN_NOT_OWNED" not in "".join(event_reasons(kubectl, namespace, "stop-me"))

    for name in ("keep-a", "keep-b"):
        kubectl("annotate", "task", name, "-n", namespace, "kubetask.io/stop=true")
    for name in ("keep-a", "keep-b"):
        assert wait_phase(kubectl, wait_for, namespace, name, TERMINAL, timeout=60)["status"]["phase"] == "Stopped"
    wait_for(lambda: dagster.run(run_id)["status"] == "FAILURE", timeout=60, what="the pool run to end")
    wait_for(lambda: not jobs(kubectl, namespace), timeout=60, what="every Job gone")


def test_rerunning_one_pooled_task_reexecutes_its_step_alone(kubectl, wait_for, namespace, pooling, dagster):
    names = ["rerun-a", "rerun-b", "rerun-c"]
    failing = {"kubetask.io/test-outcome": "fail", "kubetask.io/test-exit-code": "7"}
    apply(kubectl, namespace, workspace(pod_labels=failing), *(task(n) for n in names))
    failed = wait_all(kubectl, wait_for, namespace, names, TERMINAL)
    assert {o["status"]["phase"] for o in failed.values()} == {"Failed"}
    (run_id,) = {o["status"]["dagsterRunId"] for o in failed.values()}
    wait_for(lambda: dagster.run(run_id)["status"] == "FAILURE", timeout=30, what="the pool run to fail")

    apply(kubectl, namespace, workspace())  # the cause is fixed: its agents now succeed
    client = DagsterClient(dagster.url)
    rerun_id = client.reexecute_steps(run_id, [step_key(failed["rerun-a"])])  # Dagster UI: re-execute this step
    obj = wait_for(lambda: (o := get(kubectl, namespace, "task", "rerun-a"))["status"]["phase"] == "Completed" and o,
                   timeout=90, what="the rerun Task completed")
    assert obj["status"]["dagsterRunId"] == rerun_id and obj["status"]["attempt"] == 2
    run = wait_for(lambda: (r := dagster.run(rerun_id))["status"] == "SUCCESS" and r, timeout=30)
    assert [s["stepKey"] for s in run["stepStats"] if s["stepKey"].startswith(contract.POOL_STEP)] == [
        step_key(failed["rerun-a"])]
    for name in ("rerun-b", "rerun-c"):
        other = get(kubectl, namespace, "task", name)
        assert other["status"]["phase"] == "Failed" and other["status"]["dagsterRunId"] == run_id
    assert sorted(j["metadata"]["name"] for j in jobs(kubectl, namespace)) == [
        "rerun-a-job-1", "rerun-a-job-2", "rerun-b-job-1", "rerun-c-job-1"]


@pytest.mark.parametrize("moment", ["before-launch", "after-launch"])
def test_bridge_killed_mid_pool_loses_no_task_and_runs_none_twice(
    kubectl, wait_for, namespace, pooling, dagster, moment
):
    names = [f"crash-{i}" for i in range(4)]
    pooling.stop()
    try:
        pooling.start(module=CRASH_MID_POOL, extra_env={"KUBETASK_CRASH_POOL": moment})
        apply(kubectl, namespace, workspace(), *(task(n) for n in names))
        wait_for(lambda: pooling.proc.poll() is not None, timeout=60, what="the bridge to crash mid-pool")
        claims = {n: get(kubectl, namespace, "task", n)["metadata"]["labels"].get(vocabulary.LABEL_POOL) for n in names}
        assert len(set(claims.values())) == 1 and None not in claims.values(), claims  # every Task claimed
        assert not any(vocabulary.RUN_SUBMITTED in event_reasons(kubectl, namespace, n) for n in names)
        launched = pool_runs(dagster, namespace)
        assert len(launched) == (0 if moment == "before-launch" else 1), launched
    finally:
        pooling.start()
    done = wait_all(kubectl, wait_for, namespace, names, TERMINAL)
    assert {o["status"]["phase"] for o in done.values()} == {"Completed"}, {n: o["status"] for n, o in done.items()}
    runs = pool_runs(dagster, namespace)
    assert len(runs) == 1, runs
    assert {o["status"]["dagsterRunId"] for o in done.values()} == {runs[0]["runId"]}
    if moment == "after-launch":  # the run the crashed bridge launched, found by its pool tag
        assert runs[0]["runId"] == launched[0]["runId"]
    else:  # the claims of a pool never launched were dropped, and the Tasks pooled anew
        assert {o["metadata"]["labels"][vocabulary.LABEL_POOL] for o in done.values()} != set(claims.values())
    assert sorted(j["metadata"]["name"] for j in jobs(kubectl, namespace)) == [f"{n}-job-1" for n in names]


def test_a_burst_applied_while_dagster_is_away_waits_then_runs_as_one_pool(
    kubectl, wait_for, namespace, pooling, dagster
):
    def webserver(action: str) -> None:
        subprocess.run([str(kt_stack.DAGSTER_SCRIPT), action, "webserver"], env=dagster.env, check=True,
                       capture_output=True, timeout=300)

    names = [f"patient-{i}" for i in range(4)]
    webserver("stop")
    try:
        apply(kubectl, namespace, workspace(), *(task(n) for n in names))
        wait_for(lambda: all(vocabulary.DAGSTER_UNAVAILABLE in event_reasons(kubectl, namespace, n) for n in names),
                 timeout=60, interval=0.5, what="every pooled Task saying Dagster is unreachable")
        for n in names:
            obj = get(kubectl, namespace, "task", n)
            assert obj["status"]["phase"] == "Pending", obj["status"]
            assert condition(obj, "Ready")["reason"] == vocabulary.DAGSTER_UNAVAILABLE
        assert pooling.proc.poll() is None
    finally:
        webserver("start")
    done = wait_all(kubectl, wait_for, namespace, names, TERMINAL, timeout=180)
    assert {o["status"]["phase"] for o in done.values()} == {"Completed"}, {n: o["status"] for n, o in done.items()}
    runs = pool_runs(dagster, namespace)
    assert len(runs) == 1 and {o["status"]["dagsterRunId"] for o in done.values()} == {runs[0]["runId"]}, runs
    assert sorted(j["metadata"]["name"] for j in jobs(kubectl, namespace)) == [f"{n}-job-1" for n in names]
