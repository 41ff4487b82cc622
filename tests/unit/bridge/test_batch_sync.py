"""The bridge's Batch sync: reload the code location on change, schedule toggles, Batch status and history."""

from __future__ import annotations

import threading

from crd_bridge.batches import BatchSync, desired_toggle, owner_batch
from crd_bridge.kube import KubernetesApi
from kubetask.domain import catalog as catalog_entries
from tests.fakes import FakeCustom, batch, run


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
                from crd_bridge.dagster.client import DagsterUnavailable
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
    sync = BatchSync(dagster, KubernetesApi(custom=FakeCustom()), clock=clock, debounce=1.0, max_delay=10.0, startup_grace=2.0)
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
    sync = BatchSync(dagster, KubernetesApi(custom=FakeCustom()), clock=clock, startup_grace=0.0)
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
    sync = BatchSync(dagster, KubernetesApi(custom=FakeCustom()), clock=clock, startup_grace=0.0)
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
    sync = BatchSync(FakeDagster(), KubernetesApi(custom=custom), clock=clock, startup_grace=100.0)
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
    sync = BatchSync(FakeDagster(), KubernetesApi(custom=FakeCustom()), startup_grace=100.0)
    stopping = threading.Event()
    thread = threading.Thread(target=sync.run, args=(stopping,))
    thread.start()
    stopping.set()
    sync.observe(None, batch())  # wakes it
    thread.join(5)
    assert not thread.is_alive()
