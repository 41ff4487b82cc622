"""Batch schedules in the code location: catalog listing, definitions, the tick against a fake API, Dagster's evaluation."""

from __future__ import annotations

import copy

import pytest
from dagster import RunRequest, ScheduleEvaluationContext, SkipReason, build_schedule_context

from kubetask import vocabulary
from kubetask.domain import catalog as catalog_entries
from kubetask.domain import scheduling
from kubetask_dagster import catalog, schedules
from kubetask_dagster.definitions import build_definitions
from kubetask_dagster.resources import KubeResource
from tests.fakes import T0, FakeKube, batch, run


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
