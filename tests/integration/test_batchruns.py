"""BatchRuns end to end on the real stack: control plane + kwok, Dagster (batch_job), and the CR bridge.

Outcomes per Task: a BatchRun's Tasks share one WorkspaceConfig, so its podLabels give every Task the
same outcome. For a mix, a test asks kwok (the `steer` fixture: a kwok Stage of its own) to put the
steering labels on the pods of single Tasks, selected by their ``kubetask.io/task`` label.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from kt_helpers import (
    TERMINAL,
    apply,
    batchrun,
    condition,
    event_reasons,
    get,
    inline,
    jobs,
    phase,
    tasks_of,
    template,
    wait_batchrun,
    wait_tasks,
    workspace,
)

pytestmark = pytest.mark.integration


# --- helpers -------------------------------------------------------------------------------------


def resume(kubectl, namespace: str, name: str) -> None:
    kubectl("annotate", "batchrun", name, "-n", namespace, "kubetask.io/pause-")


def configmaps(kubectl, namespace: str) -> list[str]:
    items = json.loads(kubectl("get", "configmaps", "-n", namespace, "-o", "json").stdout)["items"]
    return [c["metadata"]["name"] for c in items if c["metadata"]["name"] != "kube-root-ca.crt"]


class PodWatch:
    """Counts the agent pods that run at the same time (created and not yet terminated) in a namespace.

    A watch that dies before ``stop()`` fails the test there: a count from a dead watch proves nothing."""

    def __init__(self, api_client, namespace: str):
        from kubernetes import client, watch

        self._core = client.CoreV1Api(api_client)
        self._watch = watch.Watch()
        self._stopping = threading.Event()
        self.error: BaseException | None = None
        self.namespace = namespace
        self.active: set[str] = set()
        self.seen: set[str] = set()
        self.max_active = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._watch.stream(self._core.list_namespaced_pod, self.namespace, timeout_seconds=600):
                pod = event["object"]
                name = pod.metadata.name
                self.seen.add(name)
                ended = event["type"] == "DELETED" or pod.status.phase in ("Succeeded", "Failed") or pod.metadata.deletion_timestamp
                if ended:
                    self.active.discard(name)
                else:
                    self.active.add(name)
                self.max_active = max(self.max_active, len(self.active))
            if not self._stopping.is_set():
                self.error = TimeoutError("the pod watch ended (600 s) before the test stopped it")
        except Exception as e:
            if not self._stopping.is_set():
                self.error = e

    def stop(self) -> None:
        self._stopping.set()
        self._watch.stop()
        self._thread.join(timeout=10)
        assert self.error is None, f"the pod watch died during the test: {self.error!r}"


# --- tests ---------------------------------------------------------------------------------------


def test_thirty_tasks_with_mixed_outcomes_end_with_exact_counters(kubectl, wait_for, namespace, bridge, dagster, steer):
    flaky = [1, 6, 11, 16, 21, 26]  # fail their first attempt, then succeed
    broken = [3, 13, 23]  # fail every attempt (1 + 2 retries)
    steer([f"mix-task-{i}" for i in flaky], {"kubetask.io/test-succeed-attempt": "2"})
    steer([f"mix-task-{i}" for i in broken], {"kubetask.io/test-outcome": "fail", "kubetask.io/test-exit-code": "4"})
    batch = {"apiVersion": "kubetask.io/v1alpha1", "kind": "Batch", "metadata": {"name": "mix"},
             "spec": template(30, parallelism=10, retries={"limit": 2, "backoff": {"initialDelay": "1s", "factor": 1}})}
    apply(kubectl, namespace, workspace(), batch, batchrun("mix", batch="mix", annotations={"kubetask.io/pause": "true"}))
    started = time.monotonic()
    wait_tasks(kubectl, wait_for, namespace, "mix", 30, phases={"Queued"})  # nothing runs while paused
    wait_batchrun(kubectl, wait_for, namespace, "mix", {"Paused"}, timeout=30)
    assert jobs(kubectl, namespace) == []  # nothing started while paused
    resume(kubectl, namespace, "mix")

    obj = wait_batchrun(kubectl, wait_for, namespace, "mix", TERMINAL, timeout=300)
    print(f"30 Tasks (6 flaky, 3 broken) at parallelism 10: {time.monotonic() - started:.1f} s")
    status = obj["status"]
    assert status["phase"] == "Failed", status
    assert status["progress"] == {"total": 30, "pending": 0, "queued": 0, "running": 0, "completed": 27, "failed": 3, "stopped": 0}
    assert status["failedTasks"] == [{"name": f"mix-task-{i}", "reason": "AgentFailed"} for i in broken]
    ready = condition(obj, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TasksFailed")
    assert status["dagsterRunId"] in ready["message"] and status["completionTime"] and status["startTime"]

    tasks = tasks_of(kubectl, namespace, "mix")
    for i in range(30):
        t = tasks[f"mix-task-{i}"]["status"]
        expected = ("Failed", 3) if i in broken else ("Completed", 2) if i in flaky else ("Completed", 1)
        assert (t["phase"], t["attempt"]) == expected, (i, t)
        if i in broken:
            assert t["exitCode"] == 4
    assert len(jobs(kubectl, namespace)) == 21 + 6 * 2 + 3 * 3  # one Job per attempt

    run = dagster.run(status["dagsterRunId"])
    assert run["status"] == "FAILURE"
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["kubetask.io/kind"] == "BatchRun" and tags["kubetask.io/batch"] == "mix" and tags["kubetask.io/uid"] == obj["metadata"]["uid"]
    assert '"max_concurrent": 10' in run["runConfigYaml"] or "max_concurrent: 10" in run["runConfigYaml"]
    reasons = event_reasons(kubectl, namespace, "mix", kind="BatchRun")
    assert {"RunSubmitted", "Resumed", "TasksFailed"} <= set(reasons), reasons


def test_parallelism_caps_the_agents_running_at_once(cluster, kubectl, wait_for, namespace, bridge, steer):
    """12 Tasks at parallelism 5: Tasks 0-4 finish at once, 5-11 hang. Slots are refilled as Tasks end
    until 5 hanging agents hold them all; a pod watch sees no more than 5 agents at any moment."""
    steer([f"capped-task-{i}" for i in range(5, 12)], {"kubetask.io/test-outcome": "hang"})
    apply(kubectl, namespace, workspace(), batchrun("capped", n=12, parallelism=5, annotations={"kubetask.io/pause": "true"}))
    wait_tasks(kubectl, wait_for, namespace, "capped", 12)
    watch = PodWatch(cluster.api_client, namespace)
    started = time.monotonic()
    try:
        resume(kubectl, namespace, "capped")

        def counts():
            phases = [phase(t) for t in tasks_of(kubectl, namespace, "capped").values()]
            return {p: phases.count(p) for p in ("Completed", "Running", "Queued")}

        wait_for(lambda: counts() == {"Completed": 5, "Running": 5, "Queued": 2} and len(watch.active) == 5,
                 timeout=180, interval=0.5, what="5 Tasks completed and 5 hanging agents holding every slot")
        elapsed = time.monotonic() - started
        time.sleep(4)  # nothing else starts while every slot is taken
        assert counts() == {"Completed": 5, "Running": 5, "Queued": 2}
        assert len(jobs(kubectl, namespace)) == 10
    finally:
        watch.stop()
    print(f"parallelism 5: slots full after {elapsed:.1f} s; at most {watch.max_active} agent pods at once ({len(watch.seen)} pods)")
    assert watch.max_active == 5 and len(watch.seen) == 10
    obj = get(kubectl, namespace, "batchrun", "capped")
    assert obj["status"]["phase"] == "Running"
    assert obj["status"]["progress"] == {"total": 12, "pending": 0, "queued": 2, "running": 5, "completed": 5, "failed": 0, "stopped": 0}
    kubectl("annotate", "batchrun", "capped", "-n", namespace, "kubetask.io/stop=true")
    assert wait_batchrun(kubectl, wait_for, namespace, "capped", TERMINAL, timeout=90)["status"]["phase"] == "Stopped"


def test_pause_stops_dispatching_and_resume_continues(kubectl, wait_for, namespace, bridge):
    apply(kubectl, namespace, workspace(), batchrun("pausable", n=8, parallelism=2))
    wait_for(lambda: sum(phase(t) == "Completed" for t in tasks_of(kubectl, namespace, "pausable").values()) >= 2,
             timeout=90, what="two Tasks completed")
    kubectl("annotate", "batchrun", "pausable", "-n", namespace, "kubetask.io/pause=true")
    wait_batchrun(kubectl, wait_for, namespace, "pausable", {"Paused"}, timeout=30)

    # Tasks already dispatched finish; then nothing else starts.
    def settled():
        tasks = tasks_of(kubectl, namespace, "pausable")
        if any(phase(t) in ("Running", "Pending") for t in tasks.values()):
            return None
        return sorted(n for n, t in tasks.items() if phase(t) != "Queued")

    first = wait_for(settled, timeout=60, what="the dispatched Tasks to finish")
    time.sleep(3)
    held = settled()
    assert held == first, "a Task started while paused"
    job_count = len(jobs(kubectl, namespace))
    time.sleep(3)
    assert settled() == held and len(jobs(kubectl, namespace)) == job_count
    assert len(held) < 8, "every Task ran although the BatchRun was paused"

    resume(kubectl, namespace, "pausable")
    obj = wait_batchrun(kubectl, wait_for, namespace, "pausable", TERMINAL, timeout=120)
    assert obj["status"]["phase"] == "Completed"
    assert obj["status"]["progress"]["completed"] == 8
    # summarize_batch wrote Completed; once the run has ended the bridge records the outcome's conditions
    obj = wait_for(lambda: (o := get(kubectl, namespace, "batchrun", "pausable")) and any(
        c["type"] == "Ready" and c["status"] == "True" for c in o["status"].get("conditions") or []) and o,
        timeout=30, what="the Ready condition")
    assert condition(obj, "Succeeded")["reason"] == "AllTasksCompleted"
    assert obj["status"]["dagsterRunId"] in condition(obj, "Succeeded")["message"]
    reasons = event_reasons(kubectl, namespace, "pausable", kind="BatchRun")
    assert "Paused" in reasons and "Resumed" in reasons


def test_pause_true_in_any_case_holds_the_tasks_of_a_running_batchrun(kubectl, wait_for, namespace, bridge):
    """``kubetask.io/pause: "True"`` (the bridge and the run read it with one parser, any case) on a BatchRun
    whose agents run 3 s each: the Tasks already dispatched finish, no Job starts while paused, the
    BatchRun shows Paused; without the annotation every Task completes."""
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-duration-ms": "3000"}), batchrun("held", n=8, parallelism=2))

    def dispatched():
        return sorted(n for n, t in tasks_of(kubectl, namespace, "held").items() if phase(t) in ("Running", "Completed"))

    wait_for(lambda: len(dispatched()) >= 2, timeout=120, interval=0.3, what="two Tasks running or completed")
    kubectl("annotate", "batchrun", "held", "-n", namespace, "kubetask.io/pause=True")
    wait_batchrun(kubectl, wait_for, namespace, "held", {"Paused"}, timeout=30)

    def settled():  # no agent left running; the Tasks that ran, and every Job there is
        tasks = tasks_of(kubectl, namespace, "held")
        if any(phase(t) in ("Running", "Pending") for t in tasks.values()):
            return None
        return sorted(n for n, t in tasks.items() if phase(t) != "Queued"), sorted(j["metadata"]["name"] for j in jobs(kubectl, namespace))

    held, held_jobs = wait_for(settled, timeout=60, interval=0.3, what="the dispatched Tasks to finish")
    assert held and len(held) < 8, held
    assert all(phase(t) == "Completed" for n, t in tasks_of(kubectl, namespace, "held").items() if n in held)
    # Held for 9 s, checked all along: neither a new Task nor a new Job, and still Paused.
    deadline = time.monotonic() + 9
    while time.monotonic() < deadline:
        assert settled() == (held, held_jobs), "a Task or a Job started while paused"
        assert phase(get(kubectl, namespace, "batchrun", "held")) == "Paused"
        time.sleep(0.5)

    resume(kubectl, namespace, "held")
    obj = wait_batchrun(kubectl, wait_for, namespace, "held", TERMINAL, timeout=180)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    assert obj["status"]["progress"]["completed"] == 8
    tasks = tasks_of(kubectl, namespace, "held")
    assert all(phase(t) == "Completed" and t["status"]["attempt"] == 1 for t in tasks.values()), tasks
    assert len(jobs(kubectl, namespace)) == 8  # one Job per Task: none ran twice
    reasons = event_reasons(kubectl, namespace, "held", kind="BatchRun")
    assert "Paused" in reasons and "Resumed" in reasons


def test_stop_terminates_the_run_and_leaves_no_job(kubectl, wait_for, namespace, bridge, dagster):
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-outcome": "hang"}), batchrun("stopme", n=6, parallelism=3))
    wait_for(lambda: sum(phase(t) == "Running" for t in tasks_of(kubectl, namespace, "stopme").values()) == 3,
             timeout=90, what="three Tasks running")
    wait_for(lambda: len(jobs(kubectl, namespace)) == 3, timeout=30, what="three Jobs")
    kubectl("annotate", "batchrun", "stopme", "-n", namespace, "kubetask.io/stop=true")
    obj = wait_batchrun(kubectl, wait_for, namespace, "stopme", TERMINAL, timeout=90)
    status = obj["status"]
    assert status["phase"] == "Stopped", status
    assert condition(obj, "Ready")["reason"] == "StopRequested"
    assert status["progress"] == {"total": 6, "pending": 0, "queued": 0, "running": 0, "completed": 0, "failed": 0, "stopped": 6}
    reasons = sorted(condition(t, "Succeeded")["reason"] for t in tasks_of(kubectl, namespace, "stopme").values())
    assert reasons == ["RunEnded"] * 3 + ["RunTerminated"] * 3, reasons
    wait_for(lambda: not jobs(kubectl, namespace), timeout=30, what="the Jobs to be deleted")
    assert dagster.run(status["dagsterRunId"])["status"] == "CANCELED"


def test_deleting_a_batchrun_leaves_nothing_behind(kubectl, wait_for, namespace, bridge, dagster):
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-outcome": "hang"}), batchrun("doomed", n=4, parallelism=2))
    wait_for(lambda: len(jobs(kubectl, namespace)) == 2 and len(configmaps(kubectl, namespace)) >= 2, timeout=90,
             what="two Jobs and their context ConfigMaps")
    run_id = get(kubectl, namespace, "batchrun", "doomed")["status"]["dagsterRunId"]
    kubectl("delete", "batchrun", "doomed", "-n", namespace)

    def nothing_left():
        left = {
            "tasks": json.loads(kubectl("get", "tasks", "-n", namespace, "-o", "json").stdout)["items"],
            "jobs": jobs(kubectl, namespace),
            "configmaps": configmaps(kubectl, namespace),
            "pods": json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"],
        }
        return not any(left.values())

    wait_for(nothing_left, timeout=90, what="no Task, Job, ConfigMap or pod left")
    wait_for(lambda: dagster.run(run_id)["status"] in ("CANCELED", "FAILURE"), timeout=30, what="the run to end")


def test_the_common_inline_text_is_stored_once_and_every_agent_gets_it(kubectl, wait_for, namespace, bridge):
    """200 KB of commonContext and 20 entries: one ConfigMap of the BatchRun holds the text, each Task holds a
    reference to it (about 0.3 KB), and each agent's context ConfigMap still has the whole text."""
    guidelines = "Follow the org's guidelines.\n" * 7_000  # ~200 KB
    spec = {"commonContext": [inline("/workspace/task.md", guidelines)],
            "variableContexts": [[inline("/workspace/item.md", f"item {i}")] for i in range(20)]}
    apply(kubectl, namespace, workspace(), batchrun("shared", batchSpec=spec))
    run = wait_batchrun(kubectl, wait_for, namespace, "shared", TERMINAL, timeout=180)
    assert run["status"]["phase"] == "Completed", run["status"]
    common = get(kubectl, namespace, "configmap", "shared-common")
    assert common["data"] == {"common-0": guidelines}
    [owner] = common["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("BatchRun", "shared", run["metadata"]["uid"])
    tasks = tasks_of(kubectl, namespace, "shared")
    assert len(tasks) == 20
    for t in tasks.values():
        assert guidelines not in json.dumps(t) and len(json.dumps(t["spec"])) < 1_000
        assert t["spec"]["contexts"][0]["file"]["source"] == {"configMapKeyRef": {"name": "shared-common", "key": "common-0"}}
    context = get(kubectl, namespace, "configmap", "shared-task-7-context")["data"]
    assert guidelines.rstrip("\n") in "".join(context.values()) and "item 7" in "".join(context.values())


def test_rerun_failed_runs_only_the_failed_tasks_again(kubectl, wait_for, namespace, bridge, dagster, steer):
    broken = ["again-task-1", "again-task-4"]
    steer(broken, {"kubetask.io/test-outcome": "fail"}, attempts=[1])  # the rerun's attempt 2 finds the cause fixed
    apply(kubectl, namespace, workspace(), batchrun("again", n=6, parallelism=3))
    first = wait_batchrun(kubectl, wait_for, namespace, "again", TERMINAL, timeout=120)
    assert first["status"]["phase"] == "Failed" and first["status"]["progress"]["failed"] == 2
    first_run = first["status"]["dagsterRunId"]
    before = {j["metadata"]["name"]: j["metadata"]["uid"] for j in jobs(kubectl, namespace)}
    assert len(before) == 6

    kubectl("annotate", "batchrun", "again", "-n", namespace, "kubetask.io/rerun=failed")
    obj = wait_for(lambda: (o := get(kubectl, namespace, "batchrun", "again"))["status"].get("dagsterRunId") != first_run
                   and o["status"]["phase"] in TERMINAL and o, timeout=120, what="the rerun to finish")
    status = obj["status"]
    assert status["phase"] == "Completed", status
    assert status["progress"]["completed"] == 6 and status["failedTasks"] == []
    assert "kubetask.io/rerun" not in (obj["metadata"].get("annotations") or {})
    tasks = tasks_of(kubectl, namespace, "again")
    after = {j["metadata"]["name"]: j["metadata"]["uid"] for j in jobs(kubectl, namespace)}
    for name, t in tasks.items():
        if name in broken:
            assert (t["status"]["phase"], t["status"]["attempt"], t["status"]["jobName"]) == ("Completed", 2, f"{name}-job-2")
        else:
            assert (t["status"]["phase"], t["status"]["attempt"]) == ("Completed", 1)
            assert after[f"{name}-job-1"] == before[f"{name}-job-1"]  # the same Job, not run again
    assert set(after) == set(before) | {f"{n}-job-2" for n in broken}
    run = dagster.run(status["dagsterRunId"])
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["dagster/parent_run_id"] == first_run and tags["kubetask.io/uid"] == obj["metadata"]["uid"]
    assert sorted(s["stepKey"] for s in run["stepStats"] if s["stepKey"].startswith("run_batch_task")) == [
        "run_batch_task[task_1]", "run_batch_task[task_4]"]
    assert "RerunStarted" in event_reasons(kubectl, namespace, "again", kind="BatchRun")


def test_status_of_a_5000_task_batchrun_stays_far_below_etcds_limit(kubectl, namespace, crds):
    from kubetask.api.batch import MAX_BATCHRUN_NAME
    from kubetask.domain.status import batchrun_outcome, outcome_conditions

    name = "b" * MAX_BATCHRUN_NAME
    run_id = "0f6a7c1e-7d3b-4f57-9a54-4ad4c3f1b2e9"
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(
        {"apiVersion": "kubetask.io/v1alpha1", "kind": "BatchRun",
         # executed-by: a BatchRun the bridge neither submits nor follows without a run of its own
         "metadata": {"name": name, "annotations": {"kubetask.io/executed-by": "test/status-size"}},
         "spec": {"batchRef": "absent"}}))
    # The status the bridge writes when such a run ends, from the same functions it calls.
    rows = [(f"{name}-task-{i}", "Failed", "AgentFailed") for i in range(5000)]
    outcome = batchrun_outcome(run_id, "FAILURE", current_phase="Running", ready=None, total=5000, tasks=rows,
                               stop_requested=False)
    assert (outcome["phase"], outcome["reason"]) == ("Failed", "TasksFailed")
    message = outcome["message"] + ": " + "x" * 100_000  # the longest failure detail: set_condition caps it
    conditions = outcome_conditions(None, "False", outcome["reason"], message, datetime.now(UTC), 1)
    status = {"phase": outcome["phase"], "progress": outcome["progress"], "failedTasks": outcome["failedTasks"],
              "dagsterRunId": run_id, "dagsterRunUrl": f"https://dagster.example.com/runs/{run_id}",
              "startTime": "2027-01-01T00:00:00Z", "completionTime": "2027-01-01T06:00:00Z",
              "conditions": conditions, "observedGeneration": 1}
    kubectl("patch", "batchrun", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))
    obj = get(kubectl, namespace, "batchrun", name)
    assert obj["status"]["progress"]["failed"] == 5000 and len(obj["status"]["failedTasks"]) == 50
    size = len(json.dumps(obj, separators=(",", ":")))
    print(f"BatchRun of 5000 failed Tasks: {size} bytes of JSON")
    assert size < 100_000


def test_a_5000_entry_batch_by_reference_keeps_its_batchrun_small_while_it_runs(kubectl, wait_for, namespace, bridge, steer):
    """A real 5,000-entry Batch referenced by batchRef: the BatchRun expands into 5,000 Tasks and runs,
    each agent reporting a pull request and its usage; its object, sampled while it runs (until 1,000
    have completed) and after it is stopped, stays under 100 KiB, and its totals count every result."""
    result = {"usage": {"inputTokens": 10, "outputTokens": 2, "costUSD": 0.01}, "pullRequests": [{"url": "https://git.example/pull/1"}]}
    steer(None, {"kubetask.io/test-duration-ms": "300"}, annotations={"kubetask.io/test-result": json.dumps(result)})
    batch = {"apiVersion": "kubetask.io/v1alpha1", "kind": "Batch", "metadata": {"name": "big"},
             "spec": {"commonContext": [inline("/workspace/task.md", "check the item")],
                      "variableContexts": [[inline("/workspace/item.md", f"item {i}")] for i in range(5000)]}}
    apply(kubectl, namespace, workspace())
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(batch))  # apply would copy it into an annotation
    apply(kubectl, namespace, batchrun("huge", batch="big", parallelism=50))
    sizes: list[int] = []

    def sample() -> dict | None:
        obj = get(kubectl, namespace, "batchrun", "huge")
        sizes.append(len(json.dumps(obj, separators=(",", ":"))))
        progress = (obj.get("status") or {}).get("progress") or {}
        return obj if progress.get("total") == 5000 and progress.get("completed", 0) >= 1000 else None

    obj = wait_for(sample, timeout=900, interval=1.0, what="5000 Tasks expanded and 1000 completed")
    assert obj["status"]["phase"] == "Running"
    kubectl("annotate", "batchrun", "huge", "-n", namespace, "kubetask.io/stop=true")
    obj = wait_batchrun(kubectl, wait_for, namespace, "huge", TERMINAL, timeout=600)
    final = len(json.dumps(obj, separators=(",", ":")))
    progress = obj["status"]["progress"]
    print(f"5000-entry Batch: BatchRun object {min(sizes)}..{max(sizes)} bytes while running ({len(sizes)} samples), "
          f"{final} bytes stopped; progress {progress}")
    assert obj["status"]["phase"] == "Stopped"
    assert progress["total"] == 5000 and sum(v for k, v in progress.items() if k != "total") == 5000
    assert max(sizes) < 100 * 1024 and final < 100 * 1024
    done = progress["completed"]
    assert done >= 1000
    assert obj["status"]["usage"] == {"inputTokens": 10 * done, "outputTokens": 2 * done,
                                      "costUSD": round(0.01 * done, 6), "tasks": done}, (obj["status"]["usage"], done)
    assert obj["status"]["pullRequests"] == done


@pytest.mark.parametrize("rerun_from", ["kubectl", "dagster-ui"])
def test_run_terminated_midway_and_rerun_completes_each_remaining_task_once(
        rerun_from, kubectl, wait_for, namespace, bridge, dagster):
    """Terminated in Dagster's UI after a few Tasks, then rerun (the kubectl annotation, or the UI's
    "re-execute from failure"): every other Task completes exactly once."""
    # agents of 3 s: the run is still busy when the test terminates it
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-duration-ms": "3000"}), batchrun("midway", n=8, parallelism=2))
    # the Tasks' own phases (written by the run), not the BatchRun's progress (the bridge's, which lags
    # while it is busy, e.g. with the 5,000 Tasks of a previous test)
    wait_for(lambda: [phase(t) for t in tasks_of(kubectl, namespace, "midway").values()].count("Completed") >= 2,
             timeout=120, interval=0.3, what="two Tasks to complete")
    first = get(kubectl, namespace, "batchrun", "midway")["status"]["dagsterRunId"]

    def terminate():
        result = dagster.graphql("""mutation($id: String!) { terminateRun(runId: $id) { __typename
                                    ... on TerminateRunFailure { message } ... on PythonError { message } } }""", {"id": first})
        return result["terminateRun"] if result["terminateRun"]["__typename"] == "TerminateRunSuccess" else print(result)

    # the code server may be too busy to answer the cancel request on a loaded machine: ask again
    wait_for(terminate, timeout=30, interval=2, what=f"Dagster to accept the termination of run {first}")
    stopped = wait_batchrun(kubectl, wait_for, namespace, "midway", TERMINAL, timeout=120)
    assert stopped["status"]["phase"] == "Stopped", stopped["status"]
    done_before = {n for n, t in tasks_of(kubectl, namespace, "midway").items() if phase(t) == "Completed"}
    assert 2 <= len(done_before) < 8

    if rerun_from == "kubectl":
        kubectl("annotate", "batchrun", "midway", "-n", namespace, "kubetask.io/rerun=failed")
    else:  # what the UI's button sends; steps that never started were recorded failed by the executor
        launched = dagster.graphql(
            """mutation($p: ReexecutionParams!) { launchRunReexecution(reexecutionParams: $p) {
                 __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""",
            {"p": {"parentRunId": first, "strategy": "FROM_FAILURE", "useParentRunTags": True}})["launchRunReexecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
    second = wait_for(lambda: (r := get(kubectl, namespace, "batchrun", "midway")["status"].get("dagsterRunId")) != first and r,
                      timeout=60, what="the re-execution to start")
    obj = wait_for(lambda: (o := get(kubectl, namespace, "batchrun", "midway"))["status"].get("dagsterRunId") == second
                   and o["status"]["phase"] in TERMINAL and o, timeout=180, what="the re-execution to finish")
    summary = {n: ((t.get("status") or {}).get("phase"), condition(t, "Succeeded")["reason"] if (t.get("status") or {}).get("conditions") else None)
               for n, t in tasks_of(kubectl, namespace, "midway").items()}
    assert obj["status"]["phase"] == "Completed", json.dumps({"tasks": summary, "run": dagster.run(second)["stepStats"],
                                                              "log": dagster.event_log_text(second)[-3000:]})
    assert obj["status"]["progress"]["completed"] == 8
    tasks = tasks_of(kubectl, namespace, "midway")
    per_task: dict[str, list[str]] = {}
    for job in jobs(kubectl, namespace):
        per_task.setdefault(job["metadata"]["labels"]["kubetask.io/task"], []).append(job["metadata"]["name"])
    for name, t in tasks.items():
        assert phase(t) == "Completed", (name, t["status"])
        assert len(per_task[name]) == 1, (name, per_task[name])  # one Job left per Task: completed once
        if name in done_before:
            assert t["status"]["attempt"] == 1 and per_task[name] == [f"{name}-job-1"]  # not run again
    run = dagster.run(second)
    rerun_steps = {s["stepKey"] for s in run["stepStats"] if s["stepKey"].startswith("run_batch_task")}
    assert len(rerun_steps) == 8 - len(done_before), rerun_steps
    assert {t["key"]: t["value"] for t in run["tags"]}["dagster/parent_run_id"] == first


def test_workspace_limit_holds_across_batchruns_and_frees_slots_on_stop(cluster, kubectl, wait_for, namespace, bridge, dagster):
    """maxConcurrentTasks 2 on the shared WorkspaceConfig, two BatchRuns of 3 hanging Tasks at parallelism 3:
    at most 2 agents run across both runs, the others are Queued with reason WorkspaceLimit; stopping
    the first BatchRun frees its slots for the second."""
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-outcome": "hang"}, maxConcurrentTasks=2))
    watch = PodWatch(cluster.api_client, namespace)
    try:
        apply(kubectl, namespace, batchrun("first", n=3, parallelism=3))
        wait_for(lambda: len(watch.active) == 2, timeout=90, interval=0.3, what="2 agents of the first BatchRun")
        apply(kubectl, namespace, batchrun("second", n=3, parallelism=3))

        def phases(name):
            return sorted(phase(t) or "" for t in tasks_of(kubectl, namespace, name).values())

        wait_for(lambda: phases("second") == ["Queued"] * 3 and phases("first") == ["Queued", "Running", "Running"],
                 timeout=90, interval=0.5, what="the second BatchRun waiting for the workspace's slots")
        time.sleep(4)  # nothing else starts while both slots are held
        assert len(watch.active) == 2 and watch.max_active == 2
        waiting = [t for t in tasks_of(kubectl, namespace, "second").values()]
        assert all(condition(t, "Ready")["reason"] in ("WorkspaceLimit", "WaitingForTurn") for t in waiting)
        assert any(condition(t, "Ready")["reason"] == "WorkspaceLimit" for t in waiting)

        kubectl("annotate", "batchrun", "first", "-n", namespace, "kubetask.io/stop=true")
        assert wait_batchrun(kubectl, wait_for, namespace, "first", TERMINAL, timeout=90)["status"]["phase"] == "Stopped"
        wait_for(lambda: phases("second").count("Running") == 2, timeout=90, interval=0.5,
                 what="the second BatchRun taking the freed slots")
        time.sleep(2)
        assert watch.max_active == 2
        pools = dagster.graphql("{ instance { concurrencyLimits { concurrencyKey slotCount } } }")
        limits = {p["concurrencyKey"]: p["slotCount"] for p in pools["instance"]["concurrencyLimits"]}
        assert limits.get(f"kubetask/{namespace}/default") == 2
        kubectl("annotate", "batchrun", "second", "-n", namespace, "kubetask.io/stop=true")
        assert wait_batchrun(kubectl, wait_for, namespace, "second", TERMINAL, timeout=90)["status"]["phase"] == "Stopped"
    finally:
        watch.stop()


@pytest.mark.parametrize("budget_of", ["batchrun", "batch"])
def test_the_batchrun_sums_its_agents_usage_and_stops_starting_tasks_once_its_budget_is_spent(
    kubectl, wait_for, namespace, bridge, dagster, steer, budget_of
):
    # Every agent reports $0.30 and a pull request (kwok hands the annotation back as the termination
    # message, as a kubelet hands back $KUBETASK_RESULT_FILE). One at a time: the first two start
    # ($0 and $0.30 spent), the third finds $0.60 of the $0.50 spent and does not start, nor does the fourth.
    # The budget is the BatchRun's own, or its Batch's (what a scheduled run of the Batch gets).
    names = [f"spend-task-{i}" for i in range(4)]
    result = {"summary": "done", "usage": {"inputTokens": 1000, "outputTokens": 200, "costUSD": 0.3, "model": "m"},
              "pullRequests": [{"url": "https://git.example/org/repo/pull/1"}]}
    steer(names, {"kubetask.io/test-duration-ms": "300"}, annotations={"kubetask.io/test-result": json.dumps(result)})
    budget = {"maxCostUSD": 0.5}
    if budget_of == "batch":
        apply(kubectl, namespace, workspace(), {"apiVersion": "kubetask.io/v1alpha1", "kind": "Batch",
                                                "metadata": {"name": "spend"}, "spec": template(4, budget=budget)},
              batchrun("spend", batch="spend", parallelism=1))
    else:
        apply(kubectl, namespace, workspace(), batchrun("spend", n=4, parallelism=1, budget=budget))

    wait_batchrun(kubectl, wait_for, namespace, "spend", TERMINAL, timeout=120)
    # summarize_batch writes the phase; the bridge the outcome's condition once the run has ended
    obj = wait_for(lambda: (b := get(kubectl, namespace, "batchrun", "spend"))
                   and condition(b, "Ready")["reason"] not in ("RunSubmitted", "RunAdopted") and b, timeout=60)
    status = obj["status"]
    assert status["phase"] == "Stopped", status
    assert status["usage"] == {"inputTokens": 2000, "outputTokens": 400, "costUSD": 0.6, "tasks": 2}
    assert status["pullRequests"] == 2
    assert status["progress"]["completed"] == 2 and status["progress"]["stopped"] == 2
    ready = condition(obj, "Ready")
    assert ready["reason"] == "BudgetExceeded" and "$0.6" in ready["message"], ready
    tasks = tasks_of(kubectl, namespace, "spend")
    assert [phase(tasks[n]) for n in names] == ["Completed", "Completed", "Stopped", "Stopped"]
    assert tasks["spend-task-0"]["status"]["result"]["usage"]["costUSD"] == 0.3
    assert tasks["spend-task-0"]["status"]["usage"] == {"inputTokens": 1000, "outputTokens": 200, "costUSD": 0.3,
                                                        "throughAttempt": 1}
    stopped = condition(tasks["spend-task-2"], "Succeeded")
    assert stopped["reason"] == "BudgetExceeded" and "cost $0.6 of $0.5" in stopped["message"], stopped
    assert len(jobs(kubectl, namespace)) == 2  # the Tasks past the budget never had a Job
    assert "BudgetExceeded" in event_reasons(kubectl, namespace, "spend-task-2")

    # the run's summary carries the totals in Dagster
    run = dagster.run(status["dagsterRunId"])
    assert run["status"] == "SUCCESS"
    summary = dagster.materializations(status["dagsterRunId"], step="summarize_batch")
    assert summary and summary[0]["metadata"]["cost_usd"] == 0.6 and summary[0]["metadata"]["pull_requests"] == 2


def test_a_rate_limited_task_of_a_batchrun_waits_without_holding_a_slot(kubectl, wait_for, namespace, bridge, dagster, steer):
    # Parallelism 1: Task 0's agent exits 75 with a reset 25 s away. Its step waits as a delayed retry,
    # holding no slot, so Task 1's step starts meanwhile and waits for the same reset (its WorkspaceConfig's
    # credential is the limited one) instead of being held Pending behind it.
    reset = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=25)
    result = {"summary": "429", "rateLimitedUntil": reset.strftime("%Y-%m-%dT%H:%M:%SZ")}
    steer(["limits-task-0"], {"kubetask.io/test-outcome": "fail", "kubetask.io/test-exit-code": "75"}, attempts=[1],
          annotations={"kubetask.io/test-result": json.dumps(result)})
    apply(kubectl, namespace, workspace(), batchrun("limits", n=2, parallelism=1))

    def both_waiting() -> dict | None:
        tasks = tasks_of(kubectl, namespace, "limits")
        return tasks if len(tasks) == 2 and all(
            phase(t) == "Queued" and condition(t, "Ready")["reason"] == "RateLimited" for t in tasks.values()) else None

    waiting = wait_for(both_waiting, timeout=(reset - datetime.now(UTC)).total_seconds(), interval=0.3,
                       what="both Tasks waiting for the rate limit at parallelism 1")
    assert datetime.now(UTC) < reset
    assert {n: t["status"]["waitingUntil"] for n, t in waiting.items()} == dict.fromkeys(waiting, result["rateLimitedUntil"])
    run_id = get(kubectl, namespace, "batchrun", "limits")["status"]["dagsterRunId"]
    # Dagster shows the step up for retry (its wait), not failed
    events = dagster.graphql(
        """query($id: ID!) { logsForRun(runId: $id, limit: 100000) { ... on EventConnection {
             events { __typename ... on MessageEvent { stepKey } } } } }""", {"id": run_id})["logsForRun"]["events"]
    waits = [e for e in events if e["__typename"] == "ExecutionStepUpForRetryEvent"]
    assert [e["stepKey"] for e in waits][:1] == ["run_batch_task[task_0]"], waits
    assert not any(e["__typename"] == "ExecutionStepFailureEvent" for e in events)

    obj = wait_batchrun(kubectl, wait_for, namespace, "limits", TERMINAL, timeout=120)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    tasks = tasks_of(kubectl, namespace, "limits")
    assert [tasks[f"limits-task-{i}"]["status"]["attempt"] for i in range(2)] == [2, 1]  # the wait spent no attempt
    created = {j["metadata"]["name"]: datetime.fromisoformat(j["metadata"]["creationTimestamp"]) for j in jobs(kubectl, namespace)}
    assert sorted(created) == ["limits-task-0-job-1", "limits-task-0-job-2", "limits-task-1-job-1"]
    assert created["limits-task-0-job-2"] >= reset and created["limits-task-1-job-1"] >= reset, (created, reset)
