"""Batch assets and schedules on the real stack: control plane + kwok, Dagster (code server, webserver,
daemon) and the CR bridge. Nothing restarts Dagster: Batch changes reach it through the bridge's reload.

Timing notes: the scheduler daemon iterates just after each minute boundary; a schedule the bridge
started fires at the first boundary after it was started, so a tick test waits up to ~2 minutes.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from dagster import RunRequest, SkipReason

from kubetask.domain import catalog, scheduling
from kubetask.domain.scheduling import materialization_batchrun_name
from kubetask_dagster import schedules
from kubetask_dagster.kube import Kube

pytestmark = pytest.mark.integration

REPO = {"repositoryLocationName": "kubetask", "repositoryName": "__repository__"}
SHOWS_UP_WITHIN = 30.0  # the bound for a Batch change to show in Dagster

SCHEDULES = """query($sel: RepositorySelector!) { schedulesOrError(repositorySelector: $sel) { __typename
  ... on Schedules { results { name cronSchedule executionTimezone scheduleState { status } } } } }"""
TICKS = """query($sel: ScheduleSelector!) { scheduleOrError(scheduleSelector: $sel) { __typename
  ... on Schedule { scheduleState { status ticks(limit: 20) { status timestamp skipReason runIds error { message } } } } } }"""
ASSET = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { __typename
  ... on AssetNode { groupName description partitionKeys opNames jobNames metadataEntries { label }
                     partitionStats { numMaterialized numPartitions } } } }"""
LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } ... on Error { message }
  ... on RunConfigValidationInvalid { errors { message } } } }"""
BACKFILL = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) { __typename
  ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } ... on Error { message } } }"""


def inline(path: str, text: str) -> dict:
    return {"type": "File", "file": {"filePath": path, "source": {"inline": text}}}


def workspace(name: str = "default", pod_labels: dict | None = None) -> dict:
    return {"apiVersion": "kubetask.io/v1alpha1", "kind": "WorkspaceConfig", "metadata": {"name": name},
            "spec": {"agentImage": "example.invalid/echo-agent:1", "serviceAccountName": "default",
                     **({"podLabels": pod_labels} if pod_labels else {})}}


def batch_obj(name: str, tasks: int = 2, schedule: dict | None = None, **spec) -> dict:
    obj = {"apiVersion": "kubetask.io/v1alpha1", "kind": "Batch", "metadata": {"name": name},
           "spec": {"commonContext": [inline("/workspace/task.md", "do it")],
                    "variableContexts": [[inline("/workspace/target.md", f"target {i}")] for i in range(tasks)], **spec}}
    if schedule is not None:
        obj["spec"]["schedule"] = schedule
    return obj


def apply(kubectl, namespace: str, *objects: dict) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def get(kubectl, namespace: str, kind: str, name: str) -> dict | None:
    result = kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def batchruns(kubectl, namespace: str, batch: str) -> list[dict]:
    out = kubectl("get", "batchruns", "-n", namespace, "-l", f"kubetask.io/batch={batch}", "-o", "json").stdout
    return json.loads(out)["items"]


def listed_schedules(dagster) -> dict[str, dict]:
    result = dagster.graphql(SCHEDULES, {"sel": REPO})["schedulesOrError"]
    assert result["__typename"] == "Schedules", result
    return {s["name"]: s for s in result["results"]}


def asset_node(dagster, key: list[str]) -> dict | None:
    result = dagster.graphql(ASSET, {"key": {"path": key}})["assetNodeOrError"]
    return result if result["__typename"] == "AssetNode" else None


def ticks(dagster, schedule: str) -> list[dict]:
    result = dagster.graphql(TICKS, {"sel": {**REPO, "scheduleName": schedule}})["scheduleOrError"]
    return result["scheduleState"]["ticks"] if result["__typename"] == "Schedule" else []


def merge_patch(kubectl, namespace: str, kind: str, name: str, patch: dict, *, status: bool = False) -> None:
    args = ["patch", kind, name, "-n", namespace, "--type=merge", "-p", json.dumps(patch)]
    kubectl(*args, *(["--subresource=status"] if status else []))


def timed(wait_for, predicate, timeout: float, what: str) -> tuple[object, float]:
    started = time.monotonic()
    result = wait_for(predicate, timeout=timeout, interval=0.25, what=what)
    return result, time.monotonic() - started


def test_schedule_and_asset_follow_the_batch_without_restarting_dagster(kubectl, wait_for, namespace, bridge, dagster):
    name = catalog.schedule_name(namespace, "nightly")
    key = catalog.asset_key_path(namespace, "nightly")
    apply(kubectl, namespace, batch_obj("nightly", tasks=3, schedule={"cron": "0 3 * * *", "timeZone": "Europe/Berlin"}))

    # Appears (and is switched on by the bridge) within 30 s of kubectl apply.
    sched, took = timed(wait_for, lambda: (s := listed_schedules(dagster).get(name)) and s["scheduleState"]["status"] == "RUNNING" and s,
                        SHOWS_UP_WITHIN, f"schedule {name} RUNNING")
    print(f"\nnew schedule listed and RUNNING after {took:.1f} s")
    assert (sched["cronSchedule"], sched["executionTimezone"]) == ("0 3 * * *", "Europe/Berlin")
    node = wait_for(lambda: asset_node(dagster, key), timeout=10, what="the Batch's asset")
    assert node["partitionKeys"] == ["task-0", "task-1", "task-2"]
    assert node["groupName"] == catalog.group_name(namespace) and node["opNames"] == [catalog.op_name(namespace, "nightly")]
    assert f"{namespace}/nightly" in node["description"]
    assert {"namespace", "batch", "uid", "kubectl"} <= {m["label"] for m in node["metadataEntries"]}

    # A cron change shows within 30 s, and so does a new Task (partition).
    merge_patch(kubectl, namespace, "batch", "nightly", {"spec": {"schedule": {"cron": "30 4 * * 1-5"}}})
    _, took = timed(wait_for, lambda: listed_schedules(dagster).get(name, {}).get("cronSchedule") == "30 4 * * 1-5",
                    SHOWS_UP_WITHIN, "the new cron in Dagster")
    print(f"cron change listed after {took:.1f} s")
    assert listed_schedules(dagster)[name]["scheduleState"]["status"] == "RUNNING"

    # suspend: true switches the schedule's toggle off; false switches it on again.
    merge_patch(kubectl, namespace, "batch", "nightly", {"spec": {"schedule": {"suspend": True}}})
    _, took = timed(wait_for, lambda: listed_schedules(dagster)[name]["scheduleState"]["status"] == "STOPPED",
                    SHOWS_UP_WITHIN, "the schedule STOPPED after suspend: true")
    print(f"suspend: true -> STOPPED after {took:.1f} s")
    merge_patch(kubectl, namespace, "batch", "nightly", {"spec": {"schedule": {"suspend": False}}})
    wait_for(lambda: listed_schedules(dagster)[name]["scheduleState"]["status"] == "RUNNING", timeout=SHOWS_UP_WITHIN,
             what="the schedule RUNNING after suspend: false")

    # Without spec.schedule, or without the Batch, the schedule goes away (and the asset with the Batch).
    kubectl("delete", "batch", "nightly", "-n", namespace)
    _, took = timed(wait_for, lambda: name not in listed_schedules(dagster) and asset_node(dagster, key) is None,
                    SHOWS_UP_WITHIN, "schedule and asset gone")
    print(f"deleted Batch gone from Dagster after {took:.1f} s")


def test_materializing_the_batch_asset_creates_a_batchrun(kubectl, wait_for, namespace, bridge, dagster):
    apply(kubectl, namespace, workspace(), batch_obj("adhoc", tasks=2))
    key = catalog.asset_key_path(namespace, "adhoc")
    wait_for(lambda: asset_node(dagster, key), timeout=SHOWS_UP_WITHIN, what="the Batch's asset")
    uid = get(kubectl, namespace, "batch", "adhoc")["metadata"]["uid"]

    # One partition from the UI's "Materialize" -> a run of the asset job -> one BatchRun of the Batch.
    params = {"selector": {**REPO, "jobName": "__ASSET_JOB", "assetSelection": [{"path": key}]},
              "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "task-1"}]}}
    launched = dagster.graphql(LAUNCH, {"p": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    expected = materialization_batchrun_name("adhoc", run_id)
    created, took = timed(wait_for, lambda: get(kubectl, namespace, "batchrun", expected), 60, f"BatchRun {expected}")
    print(f"\nBatchRun {expected} created {took:.1f} s after launchRun")
    meta = created["metadata"]
    assert meta["ownerReferences"][0]["kind"] == "Batch" and meta["ownerReferences"][0]["uid"] == uid
    assert meta["labels"]["kubetask.io/batch"] == "adhoc" and created["spec"] == {"batchRef": "adhoc"}
    assert "kubetask.io/executed-by" not in (meta.get("annotations") or {})  # the bridge runs it
    assert meta["annotations"]["kubetask.io/requested-by"] == f"run/{run_id}"
    assert wait_for(lambda: dagster.run(run_id)["status"] in ("SUCCESS", "FAILURE") and dagster.run(run_id), timeout=60)["status"] == "SUCCESS"
    assert expected in kubectl("get", "batchruns", "-n", namespace).stdout

    # The bridge runs it like any BatchRun; each Task's outcome lands on its partition of the asset.
    def finished():
        obj = get(kubectl, namespace, "batchrun", expected)
        return obj if (obj.get("status") or {}).get("phase") in ("Completed", "Failed", "Stopped") else None
    final, took = timed(wait_for, finished, 120, f"BatchRun {expected} finished")
    print(f"BatchRun {expected} {final['status']['phase']} {took:.1f} s later")
    assert final["status"]["phase"] == "Completed", final["status"]
    wait_for(lambda: asset_node(dagster, key)["partitionStats"]["numMaterialized"] == 2, timeout=30, what="both partitions materialized")

    # A backfill of every partition is one run, hence one BatchRun.
    result = dagster.graphql(BACKFILL, {"p": {"assetSelection": [{"path": key}], "partitionNames": ["task-0", "task-1"]}})
    backfill = result["launchPartitionBackfill"]
    assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
    expected_bf = materialization_batchrun_name("adhoc", backfill["backfillId"])
    _, took = timed(wait_for, lambda: get(kubectl, namespace, "batchrun", expected_bf), 120, f"BatchRun {expected_bf}")
    print(f"backfill of 2 partitions -> BatchRun {expected_bf} after {took:.1f} s")
    time.sleep(3)
    names = sorted(r["metadata"]["name"] for r in batchruns(kubectl, namespace, "adhoc"))
    assert names == sorted([expected, expected_bf])


def _wait_tick_run(kubectl, wait_for, namespace: str, batch: str, uid: str, timeout: float) -> dict:
    def owned():
        runs = [r for r in batchruns(kubectl, namespace, batch) if scheduling.owned_by(r, uid)]
        return runs[0] if runs else None
    return wait_for(owned, timeout=timeout, interval=0.5, what=f"a BatchRun of {batch} from a tick")


def test_ticks_create_owned_batchruns_that_run_and_forbid_skips(kubectl, wait_for, namespace, bridge, dagster):
    """Two every-minute schedules at once: `ok` runs to Completed; `busy` (Forbid, agent pods that never
    end) has its next tick skipped while its first BatchRun is active."""
    apply(kubectl, namespace, workspace(), workspace("stuck", pod_labels={"kubetask.io/test-outcome": "hang"}),
          batch_obj("ok", tasks=2, schedule={"cron": "* * * * *"}),
          batch_obj("busy", tasks=1, workspaceConfigRef="stuck", schedule={"cron": "* * * * *", "concurrencyPolicy": "Forbid"}))
    started = time.monotonic()
    ok_uid = get(kubectl, namespace, "batch", "ok")["metadata"]["uid"]
    busy_uid = get(kubectl, namespace, "batch", "busy")["metadata"]["uid"]
    ok_name, busy_name = catalog.schedule_name(namespace, "ok"), catalog.schedule_name(namespace, "busy")
    wait_for(lambda: all(listed_schedules(dagster).get(n, {}).get("scheduleState", {}).get("status") == "RUNNING"
                         for n in (ok_name, busy_name)), timeout=SHOWS_UP_WITHIN, what="both schedules RUNNING")

    # The first tick: a BatchRun owned by the Batch, executed by the tick's own run.
    run = _wait_tick_run(kubectl, wait_for, namespace, "ok", ok_uid, timeout=150)
    print(f"\nfirst tick's BatchRun {run['metadata']['name']} {time.monotonic() - started:.1f} s after kubectl apply")
    merge_patch(kubectl, namespace, "batch", "ok", {"spec": {"schedule": {"suspend": True}}})  # one tick is enough
    meta = run["metadata"]
    scheduled = datetime.fromtimestamp(int(meta["name"].rsplit("-", 1)[1]) * 60, UTC)
    assert meta["ownerReferences"][0] | {"controller": True} == {
        "apiVersion": "kubetask.io/v1alpha1", "kind": "Batch", "name": "ok", "uid": ok_uid, "controller": True, "blockOwnerDeletion": True}
    assert meta["annotations"]["kubetask.io/executed-by"] == f"schedule/{ok_name}"
    assert meta["annotations"]["kubetask.io/scheduled-at"] == scheduled.strftime("%Y-%m-%dT%H:%M:%SZ")

    def completed():
        obj = get(kubectl, namespace, "batchrun", meta["name"])
        return obj if (obj.get("status") or {}).get("phase") in ("Completed", "Failed", "Stopped") else None
    final = wait_for(completed, timeout=120, interval=0.5, what=f"BatchRun {meta['name']} finished")
    print(f"BatchRun {meta['name']} {final['status']['phase']} {time.monotonic() - started:.1f} s after kubectl apply")
    assert final["status"]["phase"] == "Completed", final["status"]
    assert final["status"]["progress"]["completed"] == 2

    # The run is the tick's: schedule tags, run key = the BatchRun's name, the BatchRun's uid.
    (dagster_run,) = dagster.runs_with_tags({"kubetask.io/uid": meta["uid"]})
    tags = {t["key"]: t["value"] for t in dagster.run(dagster_run["runId"])["tags"]}
    assert tags["dagster/schedule_name"] == ok_name and tags["dagster/run_key"] == meta["name"]
    assert final["status"]["dagsterRunId"] == dagster_run["runId"]
    assert any(t["status"] == "SUCCESS" and dagster_run["runId"] in t["runIds"] for t in ticks(dagster, ok_name))

    # Batch status: lastScheduleTime from the tick; active / lastSuccessfulTime follow the BatchRun.
    def batch_status():
        status = get(kubectl, namespace, "batch", "ok").get("status") or {}
        return status if status.get("lastSuccessfulTime") and not status.get("active") else None
    status = wait_for(batch_status, timeout=30, what="Batch status after the run")
    assert status["lastScheduleTime"] == scheduled.strftime("%Y-%m-%dT%H:%M:%SZ")

    # Lineage: each Task's outcome is its partition's materialization.
    node = wait_for(lambda: (n := asset_node(dagster, catalog.asset_key_path(namespace, "ok"))) and n["partitionStats"]["numMaterialized"] == 2 and n,
                    timeout=30, what="two materialized partitions")
    assert node["partitionStats"]["numPartitions"] == 2

    # Forbid: `busy` got its first BatchRun, which never ends; its next tick is skipped.
    busy_run = _wait_tick_run(kubectl, wait_for, namespace, "busy", busy_uid, timeout=30)
    status = wait_for(lambda: (s := get(kubectl, namespace, "batch", "busy").get("status") or {}).get("active") and s, timeout=30,
                      what="busy's active list")
    assert status["active"] == [{"name": busy_run["metadata"]["name"]}]
    skipped = wait_for(lambda: [t for t in ticks(dagster, busy_name) if t["status"] == "SKIPPED"], timeout=90, interval=1,
                       what="a skipped tick of busy")
    print(f"Forbid skipped a tick {time.monotonic() - started:.1f} s after kubectl apply: {skipped[0]['skipReason']}")
    assert "concurrencyPolicy Forbid" in skipped[0]["skipReason"] and busy_run["metadata"]["name"] in skipped[0]["skipReason"]
    assert [r["metadata"]["name"] for r in batchruns(kubectl, namespace, "busy")] == [busy_run["metadata"]["name"]]
    merge_patch(kubectl, namespace, "batch", "busy", {"spec": {"schedule": {"suspend": True}}})


def test_tick_decisions_on_the_real_api_server(kubectl, wait_for, namespace, bridge):
    """evaluate_tick against the API server, without waiting for the daemon: Forbid, Replace, suspend."""
    apply(kubectl, namespace, batch_obj("pol", schedule={"cron": "0 3 * * *", "concurrencyPolicy": "Forbid"}))
    batch = get(kubectl, namespace, "batch", "pol")
    owner = {"apiVersion": "kubetask.io/v1alpha1", "kind": "Batch", "name": "pol", "uid": batch["metadata"]["uid"]}
    active = {"apiVersion": "kubetask.io/v1alpha1", "kind": "BatchRun",
              "metadata": {"name": "pol-active", "labels": {"kubetask.io/batch": "pol"}, "ownerReferences": [owner],
                           "annotations": {"kubetask.io/executed-by": "test/none"}},  # the bridge leaves it alone
              "spec": {"batchRef": "pol"}}
    apply(kubectl, namespace, active)
    api = Kube()
    when = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    name = scheduling.tick_batchrun_name("pol", when)

    skipped = schedules.evaluate_tick(api, namespace, "pol", "s", when)
    assert isinstance(skipped, SkipReason) and "pol-active" in skipped.skip_message
    assert get(kubectl, namespace, "batchrun", name) is None

    merge_patch(kubectl, namespace, "batch", "pol", {"spec": {"schedule": {"concurrencyPolicy": "Replace"}}})
    request = schedules.evaluate_tick(api, namespace, "pol", "s", when)
    assert isinstance(request, RunRequest) and request.run_key == name
    assert get(kubectl, namespace, "batchrun", "pol-active")["metadata"]["annotations"]["kubetask.io/stop"] == "true"
    created = get(kubectl, namespace, "batchrun", name)
    assert created["metadata"]["ownerReferences"][0]["uid"] == batch["metadata"]["uid"]
    assert request.run_config["ops"]["expand_batch"]["config"]["uid"] == created["metadata"]["uid"]
    again = schedules.evaluate_tick(api, namespace, "pol", "s", when)  # the same tick again: the same request
    assert isinstance(again, RunRequest) and again.run_config == request.run_config
    status = get(kubectl, namespace, "batch", "pol")["status"]
    assert status["lastScheduleTime"] == when.strftime("%Y-%m-%dT%H:%M:%SZ")

    merge_patch(kubectl, namespace, "batch", "pol", {"spec": {"schedule": {"suspend": True}}})
    assert isinstance(schedules.evaluate_tick(api, namespace, "pol", "s", when + timedelta(minutes=1)), SkipReason)


def test_history_limits_and_batch_status_follow_batchruns(kubectl, wait_for, namespace, bridge):
    """The bridge prunes finished BatchRuns beyond the limits and keeps status.active when one changes."""
    apply(kubectl, namespace, batch_obj("hist", schedule={"cron": "0 3 * * *", "suspend": True,
                                                          "successfulRunsHistoryLimit": 1, "failedRunsHistoryLimit": 0}))
    uid = get(kubectl, namespace, "batch", "hist")["metadata"]["uid"]
    owner = {"apiVersion": "kubetask.io/v1alpha1", "kind": "Batch", "name": "hist", "uid": uid}

    def br(name: str) -> dict:
        return {"apiVersion": "kubetask.io/v1alpha1", "kind": "BatchRun",
                "metadata": {"name": name, "labels": {"kubetask.io/batch": "hist"}, "ownerReferences": [owner],
                             "annotations": {"kubetask.io/executed-by": "test/none"}},
                "spec": {"batchRef": "hist"}}

    apply(kubectl, namespace, br("hist-1"), br("hist-2"), br("hist-3"), br("hist-4"))
    merge_patch(kubectl, namespace, "batchrun", "hist-1", {"status": {"phase": "Completed", "completionTime": "2026-01-01T01:00:00Z"}}, status=True)
    merge_patch(kubectl, namespace, "batchrun", "hist-2", {"status": {"phase": "Completed", "completionTime": "2026-01-01T02:00:00Z"}}, status=True)
    merge_patch(kubectl, namespace, "batchrun", "hist-3", {"status": {"phase": "Failed", "completionTime": "2026-01-01T03:00:00Z"}}, status=True)
    started = time.monotonic()

    def pruned():
        names = sorted(r["metadata"]["name"] for r in batchruns(kubectl, namespace, "hist") if not r["metadata"].get("deletionTimestamp"))
        return names == ["hist-2", "hist-4"]
    wait_for(pruned, timeout=30, what="history pruned to hist-2 (newest completed) and hist-4 (active)")
    status = wait_for(lambda: (s := get(kubectl, namespace, "batch", "hist").get("status") or {}).get("lastSuccessfulTime") and s,
                      timeout=30, what="Batch status")
    print(f"\npruned and Batch status written {time.monotonic() - started:.1f} s after the BatchRuns finished")
    assert status["lastSuccessfulTime"] == "2026-01-01T02:00:00Z"
    assert status["active"] == [{"name": "hist-4"}]
