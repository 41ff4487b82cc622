"""Batch catalog -> schedule specs, tick decisions, and the bridge's reload/toggle/status logic (no cluster, no Dagster)."""

from __future__ import annotations

import copy
import threading
from datetime import datetime, timezone
from typing import Any

import pytest
from dagster import RunRequest, ScheduleEvaluationContext, SkipReason, build_schedule_context
from kubernetes.client.rest import ApiException

from crd_bridge.batches import BatchSync, desired_toggle, owner_batch
from kubetask import vocabulary
from kubetask.domain import catalog as catalog_entries
from kubetask.domain import scheduling
from kubetask_dagster import catalog, schedules
from kubetask.api.batch import MAX_SCHEDULED_BATCH_NAME
from kubetask_dagster.definitions import build_definitions
from kubetask_dagster.resources import KubeResource

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)


def batch(name: str = "nightly", ns: str = "team-a", *, uid: str = "uid-1", generation: int = 1, tasks: int = 3,
          schedule: dict | None = None, status: dict | None = None, **spec) -> dict:
    obj = {
        "apiVersion": "kubetask.io/v1alpha1", "kind": "Batch",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "generation": generation},
        "spec": {"commonContext": [], "variableContexts": [[] for _ in range(tasks)], **spec},
    }
    if schedule is not None:
        obj["spec"]["schedule"] = schedule
    if status is not None:
        obj["status"] = status
    return obj


def run(name: str, phase: str | None = None, *, owner_uid: str = "uid-1", batch_name: str = "nightly", created: str = "2026-12-01T00:00:00Z",
        completed: str | None = None, stop: bool = False, ns: str = "team-a") -> dict:
    obj: dict[str, Any] = {
        "apiVersion": "kubetask.io/v1alpha1", "kind": "BatchRun",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "creationTimestamp": created,
                     "labels": {vocabulary.LABEL_BATCH: batch_name},
                     "ownerReferences": [{"apiVersion": "kubetask.io/v1alpha1", "kind": "Batch", "name": batch_name, "uid": owner_uid}]},
        "spec": {"batchRef": batch_name},
    }
    if stop:
        obj["metadata"]["annotations"] = {vocabulary.STOP: "true"}
    if phase:
        obj["status"] = {"phase": phase, **({"completionTime": completed} if completed else {})}
    return obj


# --- catalog -> schedule specs ---------------------------------------------------------------


def test_catalog_entries_names_partitions_cron_and_tz():
    entries = catalog_entries.entries_from_batches([
        batch("plain", tasks=2),
        batch("nightly", schedule={"cron": "@daily", "timeZone": "Europe/Berlin", "concurrencyPolicy": "Forbid",
                                   "successfulRunsHistoryLimit": 5}, parallelism=4, workspaceConfigRef="ws"),
        batch("paused", ns="team-b", schedule={"cron": "*/5 * * * *", "suspend": True}),
    ])
    assert [(e.namespace, e.name) for e in entries] == [("team-a", "nightly"), ("team-a", "plain"), ("team-b", "paused")]
    nightly, plain, paused = entries
    assert plain.schedule is None and plain.partition_keys == ["task-0", "task-1"]
    assert plain.asset_key == ["kubetask", "team-a", "batches", "plain"] and plain.group_name == "kubetask_team_a"
    assert nightly.parallelism == 4 and nightly.workspace_config == "ws" and nightly.tasks == 3
    s = nightly.schedule
    assert (s.name, s.cron, s.time_zone, s.suspend, s.concurrency_policy) == ("batch__team_a__nightly", "0 0 * * *", "Europe/Berlin", False, "Forbid")
    assert s.successful_runs_history_limit == 5 and s.failed_runs_history_limit is None
    assert paused.schedule.suspend is True and paused.schedule.time_zone == "UTC" and paused.schedule.concurrency_policy == "Allow"


def test_catalog_is_tolerant_and_round_trips():
    objs = [
        batch("gone", schedule={"cron": "* * * * *"}) | {"metadata": {"name": "gone", "namespace": "a", "deletionTimestamp": "x"}},
        {"metadata": {"name": "no-ns"}, "spec": {}},
        batch("bad-cron", schedule={"cron": "every day"}),  # the API server refuses it; the catalog ignores the schedule
        batch("no-spec") | {"spec": None},
    ]
    entries = catalog_entries.entries_from_batches(objs)
    assert [(e.name, e.schedule, e.tasks) for e in entries] == [("bad-cron", None, 3), ("no-spec", None, 0)]
    again = catalog_entries.loads(catalog_entries.dumps(catalog_entries.entries_from_batches([batch(schedule={"cron": "1 2 * * *"})])))
    assert again == catalog_entries.entries_from_batches([batch(schedule={"cron": "1 2 * * *"})])


def test_schedule_names_are_valid_and_unique():
    names = {catalog_entries.schedule_name(ns, b) for ns, b in [("a", "b-c"), ("a", "b.c"), ("a--b", "c"), ("a", "b--c"), ("a-b", "c")]}
    assert len(names) == 5
    assert all(n.replace("_", "a").isalnum() for n in names)
    assert catalog_entries.schedule_name("team-a", "nightly") == "batch__team_a__nightly"  # readable when it can be
    assert catalog_entries.schedule_name("a", "b.c") == catalog_entries.schedule_name("a", "b.c")  # stable


def test_load_entries_never_fails():
    class Down:
        def list_cluster_custom_object(self, *a, **k):
            raise ConnectionRefusedError("connection refused")

    assert catalog.load_entries(env={}, custom_api=Down()) == []
    assert catalog.load_entries(env={catalog_entries.ENV_CATALOG: "off"}, custom_api=Down()) == []

    class Paged:
        calls: list = []

        def list_namespaced_custom_object(self, group, version, ns, plural, **kw):
            self.calls.append((ns, kw.get("_continue")))
            if ns == "x" and not kw.get("_continue"):
                return {"items": [batch("one", ns="x")], "metadata": {"continue": "t"}}
            return {"items": [batch("two", ns=ns)], "metadata": {}}

    api = Paged()
    entries = catalog.load_entries(env={catalog_entries.ENV_NAMESPACES: " x, y "}, custom_api=api)
    assert [(e.namespace, e.name) for e in entries] == [("x", "one"), ("x", "two"), ("y", "two")]
    assert api.calls == [("x", None), ("x", "t"), ("y", None)]


def test_definitions_from_catalog():
    entries = catalog_entries.entries_from_batches([
        batch("nightly", schedule={"cron": "@hourly", "timeZone": "Asia/Tokyo"}),
        batch("never", schedule={"cron": "0 0 31 2 *"}),  # valid cron, never fires: Dagster refuses it, the location still loads
        batch("plain"),
    ])
    repo = build_definitions(entries).get_repository_def()
    assert sorted(s.name for s in repo.schedule_defs) == ["batch__team_a__nightly"]
    sched = repo.get_schedule_def("batch__team_a__nightly")
    assert (sched.cron_schedule, sched.execution_timezone, sched.job_name) == ("0 * * * *", "Asia/Tokyo", "batch_job")
    assert sched.default_status.value == "STOPPED" and sched.required_resource_keys == {"kube"}
    assert {j.name for j in repo.get_all_jobs()} >= {"task_job", "batch_job"}


# --- tick decisions (pure) -------------------------------------------------------------------


def test_tick_name_is_minutes_since_epoch():
    name = scheduling.tick_batchrun_name("nightly", T0)
    assert name == f"nightly-{int(T0.timestamp()) // 60}" and len(name) == len("nightly-") + 8
    berlin = T0.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert scheduling.tick_batchrun_name("nightly", berlin) == name  # the time zone does not change the name
    assert len(scheduling.tick_batchrun_name("x" * MAX_SCHEDULED_BATCH_NAME, T0)) <= 42


@pytest.mark.parametrize("policy", ["Allow", "Forbid", "Replace", None])
def test_plan_tick_by_policy(policy):
    sched = {"cron": "* * * * *", **({"concurrencyPolicy": policy} if policy else {})}
    b = batch(schedule=sched)
    runs = [run("nightly-1", "Running"), run("nightly-2", "Completed"), run("nightly-3", None), run("nightly-4", "Running", stop=True)]
    plan = scheduling.plan_tick(b, runs, T0)
    assert plan.name == scheduling.tick_batchrun_name("nightly", T0)
    if policy == "Forbid":
        assert plan.skip and "nightly-1, nightly-3, nightly-4" in plan.skip
    elif policy == "Replace":
        assert plan.skip is None and plan.stop == ("nightly-1", "nightly-3")  # nightly-4 is already being stopped
    else:
        assert plan.skip is None and plan.stop == ()
    assert scheduling.plan_tick(b, [run("nightly-2", "Completed"), run("nightly-5", "Failed")], T0) == scheduling.TickPlan(plan.name)


def test_plan_tick_skips_and_repeats():
    assert scheduling.plan_tick(batch(schedule={"cron": "* * * * *", "suspend": True}), [], T0).skip == "spec.schedule.suspend is true"
    assert "no spec.schedule" in scheduling.plan_tick(batch(), [], T0).skip
    name = scheduling.tick_batchrun_name("nightly", T0)
    # The same tick evaluated again (daemon restart): not a Forbid skip of its own BatchRun.
    again = scheduling.plan_tick(batch(schedule={"cron": "* * * * *", "concurrencyPolicy": "Forbid"}), [run(name, "Running")], T0)
    assert again.exists and again.skip is None


def test_history_pruning_keeps_the_newest():
    runs = [
        run("ok-1", "Completed", completed="2026-12-01T01:00:00Z"),
        run("ok-2", "Completed", completed="2026-12-01T02:00:00Z"),
        run("ok-3", "Completed", completed="2026-12-01T03:00:00Z"),
        run("ok-4", "Completed", completed="2026-12-01T04:00:00Z"),
        run("bad-1", "Failed", completed="2026-12-01T01:30:00Z"),
        run("bad-2", "Stopped", completed="2026-12-01T02:30:00Z"),
        run("busy", "Running"),
        run("new", None),
    ]
    assert scheduling.runs_to_prune(runs, 3, 1) == ["ok-1", "bad-1"]
    assert scheduling.runs_to_prune(runs, 0, 0) == ["ok-1", "bad-1", "ok-2", "bad-2", "ok-3", "ok-4"]
    assert scheduling.runs_to_prune(runs, 10, 10) == []
    assert scheduling.history_limits(None) == (3, 1)
    assert scheduling.history_limits({"successfulRunsHistoryLimit": 0, "failedRunsHistoryLimit": 7}) == (0, 7)


def test_status_from_runs():
    runs = [run("a", "Running", created="2026-12-01T02:00:00Z"), run("b", None, created="2026-12-01T01:00:00Z"),
            run("c", "Completed", completed="2026-12-01T03:00:00Z"), run("d", "Completed", completed="2026-12-01T04:00:00Z")]
    patch = scheduling.status_from_runs(runs, {"lastSuccessfulTime": "2026-12-01T03:30:00Z"})
    assert patch == {"active": [{"name": "b"}, {"name": "a"}], "lastSuccessfulTime": "2026-12-01T04:00:00Z"}
    # Never moves back (the newest completed run may have been pruned); no active runs -> field removed.
    assert scheduling.status_from_runs([runs[2]], {"lastSuccessfulTime": "2026-12-02T00:00:00Z"}) == {"active": None}
    assert not scheduling.status_changed({"active": [{"name": "b"}]}, {"active": [{"name": "b"}]})
    assert not scheduling.status_changed({}, {"active": None})
    assert scheduling.status_changed({"active": [{"name": "b"}]}, {"active": None})


def test_scheduled_batchrun_body_and_run_request():
    b = batch(schedule={"cron": "* * * * *"}, parallelism=3)
    body = scheduling.scheduled_batchrun_body(b, "nightly-29000000", "batch__team_a__nightly", T0)
    meta = body["metadata"]
    assert meta["ownerReferences"] == [{"apiVersion": "kubetask.io/v1alpha1", "kind": "Batch", "name": "nightly", "uid": "uid-1",
                                        "controller": True, "blockOwnerDeletion": True}]
    assert meta["labels"] == {"kubetask.io/batch": "nightly"} and body["spec"] == {"batchRef": "nightly"}
    assert meta["annotations"][vocabulary.EXECUTED_BY] == "schedule/batch__team_a__nightly"  # the bridge does not submit it
    assert meta["annotations"][vocabulary.SCHEDULED_AT] == "2026-12-01T03:00:00Z"
    created = copy.deepcopy(body)
    created["metadata"]["uid"] = "br-uid"
    req = schedules.run_request(b, created, T0)
    assert req.run_key == "nightly-29000000"
    assert req.run_config["ops"]["expand_batch"]["config"] == {"namespace": "team-a", "name": "nightly-29000000", "uid": "br-uid"}
    assert req.run_config["execution"]["config"]["max_concurrent"] == 3
    assert req.tags["kubetask.io/uid"] == "br-uid" and req.tags["kubetask.io/kind"] == "BatchRun"
    assert req.tags["kubetask.io/scheduled-for"] == "2026-12-01T03:00:00Z"
    with pytest.raises(ValueError):
        scheduling.batchrun_body(b, "x" * 43)


# --- the tick against a fake API ---------------------------------------------------------------


class FakeCustom:
    """The CustomObjectsApi calls of the tick, over a dict."""

    def __init__(self):
        self.objs: dict[tuple[str, str, str], dict] = {}
        self.calls: list[tuple] = []
        self._uid = 0

    def add(self, plural: str, obj: dict) -> dict:
        self.objs[(plural, obj["metadata"]["namespace"], obj["metadata"]["name"])] = copy.deepcopy(obj)
        return obj

    def get_namespaced_custom_object(self, group, version, ns, plural, name, **_):
        try:
            return copy.deepcopy(self.objs[(plural, ns, name)])
        except KeyError:
            raise ApiException(status=404) from None

    def list_namespaced_custom_object(self, group, version, ns, plural, label_selector="", **_):
        key, _, value = label_selector.partition("=")
        return {"items": [copy.deepcopy(o) for (p, n, _), o in sorted(self.objs.items())
                          if p == plural and n == ns and (not key or (o["metadata"].get("labels") or {}).get(key) == value)]}

    def create_namespaced_custom_object(self, group, version, ns, plural, body, **_):
        self.calls.append(("create", plural, body["metadata"]["name"]))
        if (plural, ns, body["metadata"]["name"]) in self.objs:
            raise ApiException(status=409)
        self._uid += 1
        obj = copy.deepcopy(body)
        obj["metadata"].update(uid=f"new-{self._uid}", creationTimestamp="2026-12-01T03:00:01Z")
        return self.add(plural, obj)

    def patch_namespaced_custom_object(self, group, version, ns, plural, name, body, **_):
        self.calls.append(("patch", plural, name, body))
        obj = self.objs[(plural, ns, name)]
        obj["metadata"].setdefault("annotations", {}).update(body["metadata"]["annotations"])
        return obj

    def patch_namespaced_custom_object_status(self, group, version, ns, plural, name, body, **_):
        self.calls.append(("status", plural, name, body["status"]))
        obj = self.objs[(plural, ns, name)]
        status = obj.setdefault("status", {})
        for k, v in body["status"].items():
            if v is None:
                status.pop(k, None)
            else:
                status[k] = v
        return obj

    def delete_namespaced_custom_object(self, group, version, ns, plural, name, **_):
        self.calls.append(("delete", plural, name))
        if self.objs.pop((plural, ns, name), None) is None:
            raise ApiException(status=404)


class FakeKube:
    """The parts of kube.Kube the tick uses."""

    def __init__(self):
        self.custom = FakeCustom()

    def get_custom(self, plural, ns, name):
        try:
            return self.custom.get_namespaced_custom_object("", "", ns, plural, name)
        except ApiException:
            return None

    def patch_status(self, plural, ns, name, status):
        return self.custom.patch_namespaced_custom_object_status("", "", ns, plural, name, {"status": status})


def test_tick_creates_an_owned_batchrun_prunes_and_writes_status():
    api = FakeKube()
    api.custom.add("batches", batch(schedule={"cron": "* * * * *", "successfulRunsHistoryLimit": 1}))
    api.custom.add("batchruns", run("nightly-1", "Completed", completed="2026-12-01T01:00:00Z"))
    api.custom.add("batchruns", run("nightly-2", "Completed", completed="2026-12-01T02:00:00Z"))
    api.custom.add("batchruns", run("other", "Completed", owner_uid="an-older-batch"))  # same name, earlier Batch: not ours
    result = schedules.evaluate_tick(api, "team-a", "nightly", "batch__team_a__nightly", T0)
    name = scheduling.tick_batchrun_name("nightly", T0)
    assert isinstance(result, RunRequest) and result.run_key == name
    created = api.custom.objs[("batchruns", "team-a", name)]
    assert created["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert ("delete", "batchruns", "nightly-1") in api.custom.calls and ("batchruns", "team-a", "other") in api.custom.objs
    status = api.custom.objs[("batches", "team-a", "nightly")]["status"]
    assert status["lastScheduleTime"] == "2026-12-01T03:00:00Z" and status["active"] == [{"name": name}]
    # The same tick again (a daemon retry): no second BatchRun, the same run request.
    again = schedules.evaluate_tick(api, "team-a", "nightly", "batch__team_a__nightly", T0)
    assert isinstance(again, RunRequest) and again.run_key == name and again.run_config == result.run_config


def test_tick_forbid_replace_suspend_and_gone():
    api = FakeKube()
    api.custom.add("batches", batch(schedule={"cron": "* * * * *", "concurrencyPolicy": "Forbid"}))
    api.custom.add("batchruns", run("nightly-1", "Running"))
    skipped = schedules.evaluate_tick(api, "team-a", "nightly", "s", T0)
    assert isinstance(skipped, SkipReason) and "nightly-1" in skipped.skip_message
    assert not [c for c in api.custom.calls if c[0] == "create"]

    api.custom.objs[("batches", "team-a", "nightly")]["spec"]["schedule"]["concurrencyPolicy"] = "Replace"
    assert isinstance(schedules.evaluate_tick(api, "team-a", "nightly", "s", T0), RunRequest)
    assert api.custom.objs[("batchruns", "team-a", "nightly-1")]["metadata"]["annotations"] == {vocabulary.STOP: "true"}

    api.custom.objs[("batches", "team-a", "nightly")]["spec"]["schedule"]["suspend"] = True
    assert isinstance(schedules.evaluate_tick(api, "team-a", "nightly", "s", T0.replace(minute=1)), SkipReason)
    assert "no longer exists" in schedules.evaluate_tick(api, "team-a", "missing", "s", T0).skip_message


def test_schedule_definition_evaluates_through_dagster(monkeypatch):
    api = FakeKube()
    api.custom.add("batches", batch(schedule={"cron": "*/5 * * * *", "timeZone": "Europe/Berlin"}))
    monkeypatch.setattr(KubeResource, "api", property(lambda self: api))
    entries = catalog_entries.entries_from_batches([api.custom.objs[("batches", "team-a", "nightly")]])
    repo = build_definitions(entries).get_repository_def()
    sched = repo.get_schedule_def("batch__team_a__nightly")
    name = scheduling.tick_batchrun_name("nightly", T0)

    # A dry run ("Test schedule" in the UI): the decision, but no BatchRun.
    preview = sched.evaluate_tick(build_schedule_context(scheduled_execution_time=T0, resources={"kube": KubeResource()}))
    assert [r.run_key for r in preview.run_requests] == [name]
    assert preview.run_requests[0].tags["kubetask.io/preview"] == f"would create BatchRun {name}"
    assert ("batchruns", "team-a", name) not in api.custom.objs

    # A tick of the scheduler daemon (its log key ends with the tick id).
    tick = ScheduleEvaluationContext(instance_ref=None, scheduled_execution_time=T0, log_key=["__repository__", sched.name, "42"],
                                     resources={"kube": KubeResource()})
    data = sched.evaluate_tick(tick)
    assert [r.run_key for r in data.run_requests] == [name]
    assert data.run_requests[0].tags["dagster/schedule_name"] == "batch__team_a__nightly"
    assert ("batchruns", "team-a", name) in api.custom.objs


# --- the bridge: reload on change, schedule toggles, Batch status ----------------------------------


class FakeDagster:
    location = "kubetask"
    repository = "__repository__"

    def __init__(self, schedules_listed: dict[str, dict] | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.listed = schedules_listed if schedules_listed is not None else {}
        self.fail_reload = 0

    def execute(self, query, variables=None, *, mutation=False):
        op = query.split("(")[0].split()[-1]
        self.calls.append((op, variables or {}))
        if op == "BridgeReload":
            if self.fail_reload:
                self.fail_reload -= 1
                from crd_bridge.dagster_client import DagsterUnavailable
                raise DagsterUnavailable("down")
            return {"reloadRepositoryLocation": {"__typename": "WorkspaceLocationEntry", "loadStatus": "LOADED",
                                                 "locationOrLoadError": {"__typename": "RepositoryLocation"}}}
        if op == "BridgeSchedules":
            return {"schedulesOrError": {"__typename": "Schedules", "results": list(self.listed.values())}}
        if op == "BridgeStartSchedule":
            self.listed[variables["selector"]["scheduleName"]]["scheduleState"]["status"] = "RUNNING"
            return {"startSchedule": {"__typename": "ScheduleStateResult", "scheduleState": {"status": "RUNNING"}}}
        if op == "BridgeStopSchedule":
            s = next(s for s in self.listed.values() if s["scheduleState"]["id"] == variables["id"])
            s["scheduleState"]["status"] = "STOPPED"
            return {"stopRunningSchedule": {"__typename": "ScheduleStateResult", "scheduleState": {"status": "STOPPED"}}}
        raise AssertionError(op)

    def ops(self, name: str) -> int:
        return sum(1 for op, _ in self.calls if op == name)


def listed(name: str, cron: str, status: str = "STOPPED") -> dict:
    return {"name": name, "cronSchedule": cron, "executionTimezone": "UTC", "scheduleState": {"id": f"id-{name}", "status": status}}


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_bridge_reloads_once_per_burst_after_a_quiet_second():
    clock, dagster = Clock(), FakeDagster()
    sync = BatchSync(dagster, FakeCustom(), clock=clock, debounce=1.0, max_delay=10.0, startup_grace=2.0)
    sync.observe(None, batch("a"))
    sync.observe(None, batch("b"))
    sync.step()
    assert dagster.ops("BridgeReload") == 0  # start-up grace
    clock.t += 2.5
    sync.step()
    assert dagster.ops("BridgeReload") == 1
    clock.t += 5
    sync.step()
    assert dagster.ops("BridgeReload") == 1  # nothing changed
    sync.observe("MODIFIED", batch("a", status={"active": [{"name": "x"}]}))  # a status write: same generation
    clock.t += 5
    sync.step()
    assert dagster.ops("BridgeReload") == 1
    for i in range(24):  # a burst of spec changes (12 s): reload after the quiet second, or after max_delay at the latest
        sync.observe("MODIFIED", batch("a", generation=2 + i))
        clock.t += 0.5
        sync.step()
    assert dagster.ops("BridgeReload") == 2
    clock.t += 1.1
    sync.step()
    assert dagster.ops("BridgeReload") == 3
    sync.observe("DELETED", batch("b"))
    clock.t += 1.1
    sync.step()
    assert dagster.ops("BridgeReload") == 4


def test_bridge_reload_retries_with_backoff():
    clock, dagster = Clock(), FakeDagster()
    dagster.fail_reload = 2
    sync = BatchSync(dagster, FakeCustom(), clock=clock, startup_grace=0.0)
    sync.observe(None, batch("a"))
    clock.t += 1.1
    sync.step()
    sync.step()
    assert dagster.ops("BridgeReload") == 1
    clock.t += 1.1
    sync.step()
    assert dagster.ops("BridgeReload") == 2
    clock.t += 1.0
    sync.step()
    assert dagster.ops("BridgeReload") == 2  # backing off 2 s
    clock.t += 1.1
    sync.step()
    assert dagster.ops("BridgeReload") == 3 and sync._loaded is not None


def test_bridge_toggles_follow_suspend():
    clock = Clock()
    dagster = FakeDagster({"batch__team_a__on": listed("batch__team_a__on", "* * * * *"),
                           "batch__team_a__off": listed("batch__team_a__off", "* * * * *", "RUNNING")})
    sync = BatchSync(dagster, FakeCustom(), clock=clock, startup_grace=0.0)
    sync.observe(None, batch("on", schedule={"cron": "* * * * *"}))
    sync.observe(None, batch("off", schedule={"cron": "* * * * *", "suspend": True}))
    sync.observe(None, batch("plain"))
    clock.t += 1.1
    sync.step()
    assert dagster.listed["batch__team_a__on"]["scheduleState"]["status"] == "RUNNING"
    assert dagster.listed["batch__team_a__off"]["scheduleState"]["status"] == "STOPPED"
    assert (dagster.ops("BridgeStartSchedule"), dagster.ops("BridgeStopSchedule")) == (1, 1)
    # A toggle flipped in the UI holds until the Batch changes.
    dagster.listed["batch__team_a__on"]["scheduleState"]["status"] = "STOPPED"
    clock.t += 10
    sync.step()
    assert dagster.ops("BridgeStartSchedule") == 1
    sync.observe("MODIFIED", batch("on", generation=2, schedule={"cron": "*/2 * * * *"}))
    clock.t += 1.1
    sync.step()  # reloaded, but Dagster still lists the old cron: not touched yet
    assert dagster.ops("BridgeReload") == 2 and dagster.ops("BridgeStartSchedule") == 1
    dagster.listed["batch__team_a__on"]["cronSchedule"] = "*/2 * * * *"
    clock.t += 2.1
    sync.step()
    assert dagster.ops("BridgeStartSchedule") == 2


def test_desired_toggle_and_owner():
    on = catalog_entries.entry_from_batch(batch(schedule={"cron": "* * * * *"}))
    off = catalog_entries.entry_from_batch(batch(schedule={"cron": "* * * * *", "suspend": True}))
    assert [desired_toggle(on, s) for s in ("RUNNING", "STOPPED", None)] == [None, "start", "start"]
    assert [desired_toggle(off, s) for s in ("RUNNING", "STOPPED")] == ["stop", None]
    assert desired_toggle(catalog_entries.entry_from_batch(batch()), "STOPPED") is None
    assert owner_batch(run("x")) == ("team-a", "nightly")
    assert owner_batch({"metadata": {"namespace": "a", "name": "x"}}) is None


def test_bridge_refreshes_batch_status_and_history_when_a_batchrun_changes():
    clock = Clock()
    custom = FakeCustom()
    custom.add("batches", batch(schedule={"cron": "* * * * *", "failedRunsHistoryLimit": 0},
                                status={"active": [{"name": "r1"}], "lastScheduleTime": "2026-12-01T03:00:00Z"}))
    finished = custom.add("batchruns", run("r1", "Completed", completed="2026-12-01T03:01:00Z"))
    custom.add("batchruns", run("r0", "Failed", completed="2026-12-01T02:01:00Z"))
    sync = BatchSync(FakeDagster(), custom, clock=clock, startup_grace=100.0)
    sync.observe_batchrun("MODIFIED", finished)
    sync.step()
    assert not [c for c in custom.calls if c[0] == "status"]  # status_delay
    clock.t += 0.6
    sync.step()
    status = custom.objs[("batches", "team-a", "nightly")]["status"]
    assert "active" not in status and status["lastSuccessfulTime"] == "2026-12-01T03:01:00Z"
    assert status["lastScheduleTime"] == "2026-12-01T03:00:00Z"  # the tick's field is left alone
    assert ("batchruns", "team-a", "r0") not in custom.objs  # failedRunsHistoryLimit 0
    writes = len(custom.calls)
    sync.observe_batchrun("MODIFIED", finished)
    clock.t += 0.6
    sync.step()
    assert [c for c in custom.calls[writes:] if c[0] in ("status", "delete")] == []  # nothing changed, nothing written


def test_bridge_thread_stops():
    sync = BatchSync(FakeDagster(), FakeCustom(), startup_grace=100.0)
    stopping = threading.Event()
    thread = threading.Thread(target=sync.run, args=(stopping,))
    thread.start()
    stopping.set()
    sync.observe(None, batch())  # wakes it
    thread.join(5)
    assert not thread.is_alive()
