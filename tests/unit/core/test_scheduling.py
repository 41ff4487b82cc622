"""The pure half of Batch schedules: catalog entries, tick names and plans, history pruning, Batch status."""

from __future__ import annotations

import pytest

from kubetask.api.batch import MAX_SCHEDULED_BATCH_NAME
from kubetask.domain import catalog as catalog_entries
from kubetask.domain import scheduling
from tests.fakes import T0, batch, run


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
