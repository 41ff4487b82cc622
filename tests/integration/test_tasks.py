"""A Task end to end on the real stack: control plane + kwok, Dagster webserver/daemon/code server,
and the CR bridge as a process. Outcomes of agent pods are chosen with kwok test labels."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from kt_helpers import apply, condition, event_reasons, get, inline, jobs, run_worker_pids, task, wait_phase, workspace
from kt_stack import CRASH_AFTER_SUBMIT

from kubetask import vocabulary

pytestmark = pytest.mark.integration


def test_task_succeeds(kubectl, wait_for, namespace, bridge, dagster):
    apply(kubectl, namespace, workspace(), task("ok"))
    obj = wait_phase(kubectl, wait_for, namespace, "ok", {"Completed", "Failed"})
    status = obj["status"]
    assert status["phase"] == "Completed", status
    assert status["attempt"] == 1 and status["jobName"] == "ok-job-1" and status["exitCode"] == 0
    assert status["podName"].startswith("ok-job-1-")
    assert status["startTime"] and status["completionTime"]
    assert condition(obj, "Succeeded")["status"] == "True"
    job = jobs(kubectl, namespace)[0]
    assert job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert job["metadata"]["annotations"]["kubetask.io/dagster-run-id"] == status["dagsterRunId"]
    run = wait_for(lambda: (r := dagster.run(status["dagsterRunId"]))["status"] == "SUCCESS" and r, timeout=30)
    assert {t["key"]: t["value"] for t in run["tags"]}["kubetask.io/uid"] == obj["metadata"]["uid"]
    reasons = wait_for(lambda: (r := event_reasons(kubectl, namespace, "ok")) and "Completed" in r and r, timeout=10)
    assert {"RunSubmitted", "JobCreated", "Completed"} <= set(reasons)


def test_task_fails_with_the_exit_code(kubectl, wait_for, namespace, bridge):
    labels = {"kubetask.io/test-outcome": "fail", "kubetask.io/test-exit-code": "7"}
    apply(kubectl, namespace, workspace(pod_labels=labels), task("bad"))
    obj = wait_phase(kubectl, wait_for, namespace, "bad", {"Completed", "Failed"})
    assert obj["status"]["phase"] == "Failed" and obj["status"]["exitCode"] == 7
    assert condition(obj, "Succeeded")["reason"] == "AgentFailed"
    assert "exited with 7" in obj["status"]["message"]
    wait_for(lambda: "AgentFailed" in event_reasons(kubectl, namespace, "bad"), timeout=10)


def test_retries_fail_fail_succeed(kubectl, wait_for, namespace, bridge, dagster):
    labels = {"kubetask.io/test-succeed-attempt": "3", "kubetask.io/test-exit-code": "3"}
    apply(kubectl, namespace, workspace(pod_labels=labels),
          task("flaky", retries={"limit": 3, "backoff": {"initialDelay": "1s", "factor": 1}}))
    obj = wait_phase(kubectl, wait_for, namespace, "flaky", {"Completed", "Failed"}, timeout=120)
    assert obj["status"]["phase"] == "Completed" and obj["status"]["attempt"] == 3
    assert sorted(j["metadata"]["name"] for j in jobs(kubectl, namespace)) == ["flaky-job-1", "flaky-job-2", "flaky-job-3"]
    run = dagster.run(obj["status"]["dagsterRunId"])
    agent = next(s for s in run["stepStats"] if s["stepKey"] == "run_agent")
    assert len(agent["attempts"]) == 3, agent
    assert event_reasons(kubectl, namespace, "flaky").count("Retrying") == 2


def test_timeout_fails_with_reason(kubectl, wait_for, namespace, bridge):
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-outcome": "hang"}), task("slow", timeout="3s"))
    obj = wait_phase(kubectl, wait_for, namespace, "slow", {"Completed", "Failed"}, timeout=120)
    assert obj["status"]["phase"] == "Failed"
    assert condition(obj, "Succeeded")["reason"] == "Timeout", obj["status"]
    assert jobs(kubectl, namespace)[0]["spec"]["activeDeadlineSeconds"] == 3


def test_stop_annotation_stops_the_run_and_removes_the_job(kubectl, wait_for, namespace, bridge, dagster):
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-outcome": "hang"}), task("stopme"))
    wait_phase(kubectl, wait_for, namespace, "stopme", {"Running"})
    wait_for(lambda: jobs(kubectl, namespace), timeout=30)
    kubectl("annotate", "task", "stopme", "-n", namespace, "kubetask.io/stop=true")
    obj = wait_phase(kubectl, wait_for, namespace, "stopme", {"Stopped", "Failed", "Completed"})
    assert obj["status"]["phase"] == "Stopped", obj["status"]
    wait_for(lambda: not jobs(kubectl, namespace), timeout=30, what="the Job to be deleted")
    wait_for(lambda: dagster.run(obj["status"]["dagsterRunId"])["status"] == "CANCELED", timeout=30)


def test_deleting_a_task_ends_its_run(kubectl, wait_for, namespace, bridge, dagster):
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-outcome": "hang"}), task("gone"))
    obj = wait_phase(kubectl, wait_for, namespace, "gone", {"Running"})
    wait_for(lambda: jobs(kubectl, namespace), timeout=30)
    kubectl("delete", "task", "gone", "-n", namespace)
    wait_for(lambda: dagster.run(obj["status"]["dagsterRunId"])["status"] in ("CANCELED", "FAILURE"), timeout=30)
    wait_for(lambda: not jobs(kubectl, namespace), timeout=60, what="the Job to be removed")


def test_missing_configmap_key_fails_without_a_job(kubectl, wait_for, namespace, bridge):
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "notes"}, "data": {"a.md": "a"}}
    ctx = {"type": "File", "file": {"filePath": "/workspace/task.md", "source": {"configMapKeyRef": {"name": "notes", "key": "b.md"}}}}
    apply(kubectl, namespace, workspace(), cm, task("nokey", [ctx]))
    obj = wait_phase(kubectl, wait_for, namespace, "nokey", {"Completed", "Failed"})
    assert condition(obj, "Succeeded")["reason"] == "ContextRefNotFound"
    assert "b.md" in obj["status"]["message"] and "notes" in obj["status"]["message"]
    assert jobs(kubectl, namespace) == []


def test_missing_workspace_config_fails_without_a_job(kubectl, wait_for, namespace, bridge):
    apply(kubectl, namespace, task("nows", workspaceConfigRef="absent"))
    obj = wait_phase(kubectl, wait_for, namespace, "nows", {"Completed", "Failed"})
    assert condition(obj, "Succeeded")["reason"] == "WorkspaceConfigNotFound"
    assert '"absent"' in obj["status"]["message"]
    assert jobs(kubectl, namespace) == []


def test_oversize_content_fails_without_a_job(kubectl, wait_for, namespace, bridge):
    big = "x" * 700_000
    cms = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"big{i}"}, "data": {"c": big}} for i in range(2)]
    ctxs = [{"type": "File", "file": {"filePath": "/workspace/task.md", "source": {"configMapKeyRef": {"name": f"big{i}", "key": "c"}}}} for i in range(2)]
    for cm in cms:  # `create`: apply would also store the 700 kB in an annotation, over its limit
        kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(cm))
    apply(kubectl, namespace, workspace(), task("huge", ctxs))
    obj = wait_phase(kubectl, wait_for, namespace, "huge", {"Completed", "Failed"})
    assert condition(obj, "Succeeded")["reason"] == "ContextTooLarge"
    assert jobs(kubectl, namespace) == []


def test_three_contexts_on_one_path_are_aggregated_exactly(kubectl, wait_for, namespace, bridge):
    ws = workspace()
    ws["spec"]["defaultContexts"] = [inline("/workspace/task.md", "# Guidelines\nRun the tests.")]
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "notes"}, "data": {"notes.md": "From a ConfigMap."}}
    ctxs = [inline("/workspace/task.md", "Update deps."),
            {"type": "File", "file": {"filePath": "/workspace/task.md", "source": {"configMapKeyRef": {"name": "notes", "key": "notes.md"}}}},
            {"type": "File", "file": {"filePath": "/workspace/task.md", "source": {"configMapKeyRef": {"name": "notes", "key": "absent", "optional": True}}}}]
    apply(kubectl, namespace, ws, cm, task("agg", ctxs))
    obj = wait_phase(kubectl, wait_for, namespace, "agg", {"Completed", "Failed"})
    assert obj["status"]["phase"] == "Completed", obj["status"]
    data = get(kubectl, namespace, "configmap", "agg-context")["data"]
    assert data == {"workspace-task.md": (
        '<context index="0">\n# Guidelines\nRun the tests.\n</context>\n\n'
        '<context index="1">\nUpdate deps.\n</context>\n\n'
        '<context index="2">\nFrom a ConfigMap.\n</context>')}
    job = jobs(kubectl, namespace)[0]
    mounts = job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"mountPath": "/workspace/task.md", "name": "context-files", "subPath": "workspace-task.md", "readOnly": True} in mounts


SECRET_VALUE = "s3cr3t-Value-that-must-not-leak-9f8e7d"
CREDENTIAL_VALUE = "cr3dential-Value-that-must-not-leak-1a2b"


def test_secret_context_lands_in_a_secret_and_nowhere_else(kubectl, wait_for, namespace, bridge, dagster):
    secrets = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "private"},
               "stringData": {"brief": SECRET_VALUE, "token": CREDENTIAL_VALUE}}
    ws = workspace()
    ws["spec"]["credentials"] = [{"name": "api", "secretRef": {"name": "private", "key": "token"}, "env": "API_TOKEN"}]
    ctxs = [inline("/workspace/task.md", "public part"),
            {"type": "File", "file": {"filePath": "/workspace/private.md", "source": {"secretKeyRef": {"name": "private", "key": "brief"}}}}]
    apply(kubectl, namespace, secrets, ws, task("sec", ctxs))
    obj = wait_phase(kubectl, wait_for, namespace, "sec", {"Completed", "Failed"})
    assert obj["status"]["phase"] == "Completed", obj["status"]
    ours = get(kubectl, namespace, "secret", "sec-context-secret")
    assert base64.b64decode(ours["data"]["workspace-private.md"]).decode() == SECRET_VALUE
    assert ours["metadata"]["ownerReferences"][0]["name"] == "sec"
    exposed = {
        "configmaps": kubectl("get", "configmaps", "-n", namespace, "-o", "json").stdout,
        "events": kubectl("get", "events", "-n", namespace, "-o", "json").stdout,
        "jobs": kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout,
        "task": json.dumps(obj),
        "dagster event log": dagster.event_log_text(obj["status"]["dagsterRunId"]),
        "run config and tags": json.dumps(dagster.run(obj["status"]["dagsterRunId"])),
        "bridge log": bridge.log(),
        # the code server's, webserver's and daemon's output (run workers write to the code server's)
        # and the captured compute logs of every step
        "dagster logs": "".join(p.read_text(errors="replace") for p in Path(dagster.home).rglob("*")
                                if p.is_file() and (p.suffix in (".log", ".out", ".err") or "compute_logs" in p.parts)),
    }
    for where, text in exposed.items():
        for value in (SECRET_VALUE, CREDENTIAL_VALUE):
            assert value not in text, f"a Secret value leaked into {where}"
            assert base64.b64encode(value.encode()).decode() not in text, f"a Secret value leaked (base64) into {where}"
    assert "private.md" in exposed["dagster event log"]  # the scan looked at the right run
    assert "Started Dagster code server" in exposed["dagster logs"] or len(exposed["dagster logs"]) > 1000


def test_bridge_killed_right_after_submitting_leaves_one_run_and_one_job(kubectl, wait_for, namespace, bridge, dagster):
    bridge.stop()
    try:
        bridge.start(module=CRASH_AFTER_SUBMIT)
        apply(kubectl, namespace, workspace(), task("crash"))
        uid = get(kubectl, namespace, "task", "crash")["metadata"]["uid"]
        wait_for(lambda: bridge.proc.poll() is not None, timeout=60, what="the bridge to crash after submitting")
        # The bridge wrote nothing (its RunSubmitted Event follows its status write). The run itself,
        # launched without waiting for the queue, may already have recorded its id as it started.
        assert vocabulary.RUN_SUBMITTED not in event_reasons(kubectl, namespace, "crash")
    finally:
        bridge.start()
    obj = wait_phase(kubectl, wait_for, namespace, "crash", {"Completed", "Failed"})
    assert obj["status"]["phase"] == "Completed"
    runs = dagster.runs_with_tags({"kubetask.io/uid": uid})
    assert len(runs) == 1 and runs[0]["runId"] == obj["status"]["dagsterRunId"]
    assert [j["metadata"]["name"] for j in jobs(kubectl, namespace)] == ["crash-job-1"]


def test_run_worker_killed_mid_wait_fails_the_task(kubectl, wait_for, namespace, bridge, dagster):
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-outcome": "hang"}), task("orphan"))
    wait_phase(kubectl, wait_for, namespace, "orphan", {"Running"})
    wait_for(lambda: jobs(kubectl, namespace), timeout=30)
    pids = wait_for(lambda: run_worker_pids(dagster.home), timeout=10, what="the run worker process")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    obj = wait_phase(kubectl, wait_for, namespace, "orphan", {"Failed", "Stopped", "Completed"}, timeout=90)
    assert obj["status"]["phase"] == "Failed"
    reason = condition(obj, "Succeeded")["reason"]
    assert reason in ("RunFailed", "RunEndedWithoutStatus"), obj["status"]
    assert obj["status"]["message"]


def test_log_tail_and_lineage_are_recorded_in_dagster(kubectl, wait_for, namespace, bridge, dagster):
    apply(kubectl, namespace, workspace(), task("traced"))
    obj = wait_phase(kubectl, wait_for, namespace, "traced", {"Completed", "Failed"})
    log_text = dagster.event_log_text(obj["status"]["dagsterRunId"])
    assert "=== Task Content ===" in log_text  # kwok's canned agent log, read through the API server
    data = dagster.graphql(
        """query($key: AssetKeyInput!) { assetOrError(assetKey: $key) { ... on Asset {
             assetMaterializations(limit: 10) { partition runId metadataEntries { label
               ... on TextMetadataEntry { text } ... on IntMetadataEntry { intValue } } } } } }""",
        {"key": {"path": ["kubetask", namespace, "tasks"]}},
    )
    materializations = data["assetOrError"]["assetMaterializations"]
    assert [m["partition"] for m in materializations] == ["traced"]
    entries = {e["label"]: e.get("text", e.get("intValue")) for e in materializations[0]["metadataEntries"]}
    assert entries["job"] == "traced-job-1" and entries["attempt"] == 1 and entries["exit_code"] == 0
    assert entries["pod"] == obj["status"]["podName"]


def test_terminating_the_run_in_dagster_stops_the_task(kubectl, wait_for, namespace, bridge, dagster):
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-outcome": "hang"}), task("uistop"))
    obj = wait_phase(kubectl, wait_for, namespace, "uistop", {"Running"})
    wait_for(lambda: jobs(kubectl, namespace), timeout=30)
    result = dagster.graphql(
        "mutation($id: String!) { terminateRun(runId: $id) { __typename } }", {"id": obj["status"]["dagsterRunId"]}
    )
    assert result["terminateRun"]["__typename"] == "TerminateRunSuccess"
    obj = wait_phase(kubectl, wait_for, namespace, "uistop", {"Stopped", "Failed", "Completed"})
    assert obj["status"]["phase"] == "Stopped"
    assert condition(obj, "Succeeded")["reason"] == "RunTerminated"
    wait_for(lambda: not jobs(kubectl, namespace), timeout=30, what="the Job to be deleted")


def test_job_deleted_by_hand_fails_the_task(kubectl, wait_for, namespace, bridge):
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-outcome": "hang"}), task("lost"))
    wait_phase(kubectl, wait_for, namespace, "lost", {"Running"})
    wait_for(lambda: jobs(kubectl, namespace), timeout=30)
    kubectl("delete", "job", "lost-job-1", "-n", namespace, "--cascade=background")
    obj = wait_phase(kubectl, wait_for, namespace, "lost", {"Failed", "Stopped", "Completed"}, timeout=60)
    assert obj["status"]["phase"] == "Failed"
    assert condition(obj, "Succeeded")["reason"] == "JobDeleted"


def test_workspace_concurrency_limit_queues_tasks(kubectl, wait_for, namespace, bridge):
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-outcome": "hang"}, maxConcurrentTasks=1), task("first"))
    wait_phase(kubectl, wait_for, namespace, "first", {"Running"})
    apply(kubectl, namespace, task("second"))
    obj = wait_phase(kubectl, wait_for, namespace, "second", {"Queued"}, timeout=30)
    assert condition(obj, "Ready")["reason"] == "WorkspaceConcurrencyLimit"
    assert jobs(kubectl, namespace)[0]["metadata"]["name"] == "first-job-1" and len(jobs(kubectl, namespace)) == 1
    kubectl("annotate", "task", "first", "-n", namespace, "kubetask.io/stop=true")
    wait_phase(kubectl, wait_for, namespace, "first", {"Stopped"})
    wait_phase(kubectl, wait_for, namespace, "second", {"Running"}, timeout=60)


def test_remote_file_is_fetched_with_a_secret_header(kubectl, wait_for, namespace, bridge, dagster, remote_files):
    path = f"/{namespace}/style.md"
    url = remote_files.serve(path, b"remote guidelines", require={"Authorization": "Bearer t0ken-from-secret"}) + "?sig=abc"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web"}, "stringData": {"auth": "Bearer t0ken-from-secret\n"}}
    ctx = {"type": "RemoteFile", "remoteFile": {"filePath": "/workspace/style.md", "url": url,
           "headers": [{"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "web", "key": "auth"}}}]}}
    apply(kubectl, namespace, secret, workspace(), task("remote", [inline("/workspace/task.md", "x"), ctx]))
    obj = wait_phase(kubectl, wait_for, namespace, "remote", {"Completed", "Failed"})
    assert obj["status"]["phase"] == "Completed", obj["status"]
    assert [(p, h.get("Authorization")) for p, h in remote_files.requests_to(path)] == [(f"{path}?sig=abc", "Bearer t0ken-from-secret")]
    # content fetched with a Secret header is treated as sensitive: it goes to the Task's Secret
    secret_data = get(kubectl, namespace, "secret", "remote-context-secret")["data"]
    assert base64.b64decode(secret_data["workspace-style.md"]).decode() == "remote guidelines"
    events = dagster.event_log_text(obj["status"]["dagsterRunId"])
    assert "t0ken-from-secret" not in events
    assert hashlib.sha256(b"remote guidelines").hexdigest() not in events  # sensitive content gets no hash
    # a refused fetch (403 without the header) fails the Task with a reason, and no Job
    bad = {"type": "RemoteFile", "remoteFile": {"filePath": "/workspace/gone.md", "url": remote_files.url(path)}}
    apply(kubectl, namespace, task("remote-denied", [bad]))
    obj = wait_phase(kubectl, wait_for, namespace, "remote-denied", {"Completed", "Failed"})
    assert condition(obj, "Succeeded")["reason"] == "RemoteFileUnavailable"
    assert "403" in obj["status"]["message"]


def test_bridge_serves_health_and_metrics(bridge):
    import requests

    base = f"http://127.0.0.1:{bridge.health_port}"
    assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
    metrics = requests.get(f"{base}/metrics", timeout=5).text
    assert "kubetask_bridge" in metrics


def test_image_pull_failure_ends_the_wait_with_a_reason(kubectl, wait_for, namespace, bridge):
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-outcome": "image-pull-error"}), task("nopull"))
    obj = wait_phase(kubectl, wait_for, namespace, "nopull", {"Completed", "Failed"}, timeout=60)
    assert obj["status"]["phase"] == "Failed"
    assert condition(obj, "Succeeded")["reason"] == "ImagePullFailed"
    assert "pull access denied" in obj["status"]["message"]


def test_a_rate_limited_agent_waits_for_the_reset_and_holds_its_workspace_configs_other_tasks(
    kubectl, wait_for, namespace, bridge, dagster, steer
):
    # Attempt 1 exits 75 with a reset 30 s away (kwok hands the annotation back as the termination
    # message). The Task has no retries, yet starts again at the reset: the wait is not an attempt.
    reset = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=30)
    result = {"summary": "the provider said 429", "rateLimitedUntil": reset.strftime("%Y-%m-%dT%H:%M:%SZ")}
    steer(["limited"], {"kubetask.io/test-outcome": "fail", "kubetask.io/test-exit-code": "75"}, attempts=[1],
          annotations={"kubetask.io/test-result": json.dumps(result)})
    apply(kubectl, namespace, workspace(), task("limited"))
    waiting = wait_for(lambda: (t := get(kubectl, namespace, "task", "limited")) and t.get("status", {}).get("phase") == "Queued"
                       and condition(t, "Ready")["reason"] == "RateLimited" and t, timeout=60)
    assert waiting["status"]["waitingUntil"] == result["rateLimitedUntil"] and waiting["status"]["attempt"] == 1
    held = get(kubectl, namespace, "workspaceconfig", "default")
    assert held["status"]["rateLimitedUntil"] == result["rateLimitedUntil"]

    # A Task of the same WorkspaceConfig applied during the wait does not start before the reset either.
    assert datetime.now(UTC) < reset - timedelta(seconds=12), "the first attempt took too long to see the wait"
    apply(kubectl, namespace, task("next"))

    def counts() -> tuple[int | None, int | None]:
        status = get(kubectl, namespace, "workspaceconfig", "default").get("status") or {}
        return status.get("running"), status.get("queued")

    # the WorkspaceConfig's status counts both as waiting (the bridge counts them from its cache)
    wait_for(lambda: counts() == (0, 2), timeout=(reset - datetime.now(UTC)).total_seconds(), interval=0.3,
             what="the WorkspaceConfig's status counting 2 queued Tasks")
    for name in ("limited", "next"):
        obj = wait_phase(kubectl, wait_for, namespace, name, {"Completed", "Failed"}, timeout=90)
        assert obj["status"]["phase"] == "Completed", obj["status"]
    wait_for(lambda: counts() == (0, 0), timeout=15, what="the WorkspaceConfig's status counting none")
    assert get(kubectl, namespace, "task", "limited")["status"]["attempt"] == 2
    assert "RateLimited" in event_reasons(kubectl, namespace, "next")
    created = {j["metadata"]["name"]: datetime.fromisoformat(j["metadata"]["creationTimestamp"]) for j in jobs(kubectl, namespace)}
    assert sorted(created) == ["limited-job-1", "limited-job-2", "next-job-1"]
    assert created["limited-job-2"] >= reset and created["next-job-1"] >= reset, (created, reset)
    run = dagster.run(waiting["status"]["dagsterRunId"])
    assert run["status"] == "SUCCESS"
    agent = next(s for s in run["stepStats"] if s["stepKey"] == "run_agent")
    assert len(agent["attempts"]) == 2  # in Dagster the wait is a retry of the step, shown as waiting


def test_a_reset_beyond_max_rate_limit_wait_fails_the_task(kubectl, wait_for, namespace, bridge, steer):
    far = (datetime.now(UTC) + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    steer(["far"], {"kubetask.io/test-outcome": "fail", "kubetask.io/test-exit-code": "75"},
          annotations={"kubetask.io/test-result": json.dumps({"rateLimitedUntil": far})})
    apply(kubectl, namespace, workspace(maxRateLimitWait="30m"), task("far", retries={"limit": 2}))
    obj = wait_phase(kubectl, wait_for, namespace, "far", {"Completed", "Failed"}, timeout=60)
    assert obj["status"]["phase"] == "Failed" and condition(obj, "Succeeded")["reason"] == "RateLimitWaitExceeded"
    assert "more than maxRateLimitWait (30m)" in obj["status"]["message"]
    assert [j["metadata"]["name"] for j in jobs(kubectl, namespace)] == ["far-job-1"]


def test_a_start_quota_spreads_a_burst_over_its_window(kubectl, wait_for, namespace, bridge):
    # Three Tasks at once, two starts per 8 s: the third waits as Queued (QuotaExhausted) until the first
    # start leaves the window, although all three run workers decide at the same moment.
    apply(kubectl, namespace, workspace(quota={"maxTaskStarts": 2, "window": "8s"}), *(task(f"q{i}") for i in range(3)))
    for i in range(3):
        obj = wait_phase(kubectl, wait_for, namespace, f"q{i}", {"Completed", "Failed"}, timeout=90)
        assert obj["status"]["phase"] == "Completed" and obj["status"]["attempt"] == 1, obj["status"]
    created = sorted(datetime.fromisoformat(j["metadata"]["creationTimestamp"]) for j in jobs(kubectl, namespace))
    assert len(created) == 3
    assert (created[2] - created[0]).total_seconds() >= 7, created  # whole seconds: 8 s less the rounding
    waited = [i for i in range(3) if "QuotaExhausted" in event_reasons(kubectl, namespace, f"q{i}")]
    assert len(waited) == 1, waited
    recent = get(kubectl, namespace, "workspaceconfig", "default")["status"]["recentStarts"]
    assert 1 <= len(recent) <= 2


def test_a_spent_workspace_budget_holds_the_next_task_until_the_period_rolls(kubectl, wait_for, namespace, bridge, steer):
    # $0.50 per 20 s period; the first Task reports $0.60, which its run worker adds to status.spend.
    steer(["spender"], {"kubetask.io/test-duration-ms": "200"},
          annotations={"kubetask.io/test-result": json.dumps({"usage": {"inputTokens": 50, "costUSD": 0.6}})})
    apply(kubectl, namespace, workspace(budget={"maxCostUSD": 0.5, "period": "20s"}), task("spender"))
    wait_phase(kubectl, wait_for, namespace, "spender", {"Completed"}, timeout=60)
    spend = get(kubectl, namespace, "workspaceconfig", "default")["status"]["spend"]
    assert spend["costUSD"] == 0.6 and spend["inputTokens"] == 50, spend

    # A period with at least 8 s left, spent: the next Task waits as Queued (BudgetExhausted) until it ends.
    left = 20 - time.time() % 20
    if left < 8:
        time.sleep(left + 0.2)
    start = datetime.fromtimestamp(int(time.time()) // 20 * 20, UTC)
    spent = {"status": {"spend": {"periodStart": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "costUSD": 0.6}}}
    kubectl("patch", "workspaceconfig", "default", "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(spent))
    apply(kubectl, namespace, task("later"))
    obj = wait_phase(kubectl, wait_for, namespace, "later", {"Completed", "Failed"}, timeout=60)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    assert "BudgetExhausted" in event_reasons(kubectl, namespace, "later")
    [job] = [j for j in jobs(kubectl, namespace) if j["metadata"]["name"] == "later-job-1"]
    assert datetime.fromisoformat(job["metadata"]["creationTimestamp"]) >= start + timedelta(seconds=20)
