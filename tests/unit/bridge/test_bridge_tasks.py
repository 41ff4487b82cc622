"""The bridge's Task decisions against a fake Kubernetes API and a fake Dagster (no network)."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest

from crd_bridge import metrics
from crd_bridge.cache import WorkspaceLimits
from crd_bridge.dagster.client import DagsterRejected
from crd_bridge.pools import PoolPolicy
from crd_bridge.tasks import Reconciler, count_reported_usage
from crd_bridge.tenancy import TenantGate
from kubetask import vocabulary
from kubetask.domain import runs as contract
from kubetask.vocabulary import TAG_GENERATION, TAG_KIND, TAG_NAME, TAG_NAMESPACE, TAG_UID
from tests.unit.bridge.bridge_fakes import NS, T0, Clock, FakeDagster, FakeKube, task_store


def run_tags(task: dict[str, Any]) -> dict[str, str]:
    return contract.run_tags(task, vocabulary.KIND_TASK)


class World:
    """A reconciler over fakes, plus shortcuts."""

    def __init__(self, grace: float = 5.0, run_worker: str | None = None, pooling: PoolPolicy | None = None) -> None:
        self.clock = Clock()
        self.kube = FakeKube()
        self.dagster = FakeDagster(self.clock)
        self.store = task_store(self.clock)
        self.limits = WorkspaceLimits(self.kube, clock=self.clock)
        self.enqueued: list[tuple[tuple[str, str], float]] = []
        self.r = Reconciler(
            self.kube,
            self.dagster,
            self.store,
            self.limits,
            run_url=lambda run_id: f"http://dagster.test/runs/{run_id}",
            grace=grace,
            enqueue=lambda key, delay: self.enqueued.append((key, delay)),
            clock=self.clock,
            tenancy=TenantGate(self.kube, run_worker, clock=self.clock),
            pooling=pooling,
        )
        self._uid = 0

    def task(
        self,
        name: str,
        *,
        created: str | None = None,
        workspace: str | None = None,
        status: dict[str, Any] | None = None,
        annotations: dict[str, str] | None = None,
        generation: int = 1,
    ) -> dict[str, Any]:
        self._uid += 1
        obj: dict[str, Any] = {
            "apiVersion": "kubetask.io/v1alpha1",
            "kind": "Task",
            "metadata": {
                "name": name,
                "namespace": NS,
                "uid": f"uid-{name}-{self._uid}",
                "generation": generation,
                "creationTimestamp": created or f"2026-01-01T00:00:{self._uid:02d}Z",
                "annotations": annotations or {},
            },
            "spec": {"contexts": [], **({"workspaceConfigRef": workspace} if workspace else {})},
        }
        if status:
            obj["status"] = status
        stored = self.kube.add("tasks", obj)
        self.r.observe(None, stored)
        return stored

    def workspace(self, name: str = "default", limit: int | None = None) -> None:
        obj = {"metadata": {"name": name, "namespace": NS}, "spec": {"serviceAccountName": "agent"}}
        if limit is not None:
            obj["spec"]["maxConcurrentTasks"] = limit
        self.kube.objs[("workspaceconfigs", NS, name)] = obj
        self.r.observe_workspace(None, copy.deepcopy(obj))

    def sync(self, name: str) -> dict[str, Any]:
        """Deliver the current object as a watch event (what kopf would do)."""
        obj = self.kube.get("tasks", NS, name)
        assert obj is not None
        self.r.observe("MODIFIED", obj)
        return obj

    def reconcile(self, name: str) -> float | None:
        return self.r.reconcile_key((NS, name))

    def status(self, name: str) -> dict[str, Any]:
        return self.kube.status_of("tasks", name)

    def condition(self, name: str, type_: str = "Ready") -> dict[str, Any]:
        return next(c for c in self.status(name).get("conditions", []) if c["type"] == type_)


def running_status(run_id: str, job: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running", "dagsterRunId": run_id, "observedGeneration": 1}
    if job:
        status["jobName"] = job
        status["attempt"] = 1
    return status


# --- submission --------------------------------------------------------------------------------


def test_new_task_is_submitted_with_the_contract_tags_and_config():
    w = World()
    t = w.task("a", generation=3)
    assert w.reconcile("a") is None
    assert len(w.dagster.submitted) == 1
    job, config, tags = w.dagster.submitted[0]
    assert job == "task_job"
    assert config == {
        "ops": {
            "prepare_task": {"config": {"namespace": NS, "name": "a", "uid": t["metadata"]["uid"], "generation": 3}}
        }
    }
    assert tags == {
        TAG_KIND: "Task",
        TAG_NAMESPACE: NS,
        TAG_NAME: "a",
        TAG_UID: t["metadata"]["uid"],
        TAG_GENERATION: "3",
    }
    assert all(isinstance(v, str) for v in tags.values())
    st = w.status("a")
    run_id = st["dagsterRunId"]
    assert st["phase"] == "Pending"
    assert st["dagsterRunUrl"] == f"http://dagster.test/runs/{run_id}"
    assert st["observedGeneration"] == 3
    ready = w.condition("a")
    assert (ready["status"], ready["reason"]) == ("False", "RunSubmitted")
    assert "RunSubmitted" in w.kube.reasons("a")


def test_helpers_match_the_contract():
    w = World()
    t = w.task("x", generation=2)
    assert run_tags(t)[TAG_GENERATION] == "2"
    assert contract.task_run_config(t)["ops"]["prepare_task"]["config"]["generation"] == 2


def test_existing_run_found_by_tags_is_used_not_resubmitted():
    w = World()
    t = w.task("a")
    existing = w.dagster.add_run("STARTED", run_tags(t))
    w.reconcile("a")
    assert w.dagster.submitted == []
    assert w.status("a")["dagsterRunId"] == existing


def test_a_run_of_an_older_generation_is_not_reused():
    w = World()
    t = w.task("a", generation=2)
    w.dagster.add_run("STARTED", {**run_tags(t), TAG_GENERATION: "1"})
    w.reconcile("a")
    assert len(w.dagster.submitted) == 1


def test_crash_between_submit_and_status_write_does_not_submit_twice():
    w = World()
    w.task("a")
    w.kube.patch_error = RuntimeError("connection reset")  # the status write fails after the submit
    delay = w.reconcile("a")
    assert delay is not None and delay > 0
    assert len(w.dagster.submitted) == 1
    assert "dagsterRunId" not in w.status("a")
    w.reconcile("a")  # retry (or a restarted bridge)
    assert len(w.dagster.submitted) == 1
    assert w.status("a")["dagsterRunId"] == "run-1"


def test_conflict_on_status_write_rereads_and_never_overwrites_the_runs_phase():
    w = World()
    w.task("a")

    def op_writes_running(ns: str, name: str) -> None:  # the run was fast: its op wrote Running first
        w.kube.write_status("tasks", name, {"phase": "Running", "jobName": "a-job-1", "attempt": 1})

    w.kube.before_patch = op_writes_running
    assert w.reconcile("a") is None
    st = w.status("a")
    assert st["phase"] == "Running"  # not moved back to Pending
    assert st["jobName"] == "a-job-1"
    assert st["dagsterRunId"] == "run-1"
    assert len(w.dagster.submitted) == 1
    assert w.kube.gets >= 1  # it re-read the Task after the 409


def test_terminal_tasks_and_tasks_with_runs_are_not_submitted():
    w = World()
    w.task("done", status={"phase": "Completed"})
    w.task("failed", status={"phase": "Failed", "dagsterRunId": "old"})
    w.reconcile("done")
    w.reconcile("failed")
    assert w.dagster.submitted == []
    assert w.kube.status_patches == []


def test_tasks_executed_by_a_batchrun_are_left_alone():
    w = World()
    w.task("b", annotations={"kubetask.io/executed-by": "run-batch"})
    w.task(
        "c",
        annotations={"kubetask.io/executed-by": "run-batch", "kubetask.io/stop": "true"},
        status={"phase": "Running", "dagsterRunId": "run-batch"},
    )
    assert all(k[1] not in ("b", "c") for k, _ in w.enqueued)
    w.reconcile("b")
    w.reconcile("c")
    w.r.periodic()
    assert w.dagster.submitted == [] and w.dagster.terminated == [] and w.kube.status_patches == []
    assert all(k[1] not in ("b", "c") for k, _ in w.enqueued)
    w.r.observe("DELETED", w.kube.get("tasks", NS, "c"))
    w.reconcile("c")
    assert w.dagster.terminated == []


def test_dagster_unreachable_keeps_the_task_waiting_then_submits():
    w = World()
    w.task("a")
    w.dagster.unavailable = True
    first = w.reconcile("a")
    early = w.reconcile("a")  # an event before the retry is due: no faster growth
    assert first is not None and early == first
    w.clock.t += first
    second = w.reconcile("a")
    assert second is not None and second > first  # backoff grows per scheduled retry
    st = w.status("a")
    assert "dagsterRunId" not in st
    assert w.condition("a")["reason"] == "DagsterUnavailable"
    assert w.kube.reasons("a").count("DagsterUnavailable") == 1  # noted once, not per attempt
    w.dagster.unavailable = False
    assert w.reconcile("a") is None
    assert w.status("a")["phase"] == "Pending"
    assert w.condition("a")["reason"] == "RunSubmitted"


def test_rejected_submission_fails_the_task():
    w = World()
    w.task("a")
    w.dagster.reject = DagsterRejected("RunConfigValidationInvalid", 'Missing required config entry "uid"')
    assert w.reconcile("a") is None
    st = w.status("a")
    assert st["phase"] == "Failed"
    ready = w.condition("a")
    assert ready["reason"] == "RunSubmissionFailed"
    assert "Missing required config entry" in ready["message"]
    assert ("a", "RunSubmissionFailed") in [(n, r) for n, r, _, warn in w.kube.events if warn]


def test_a_task_in_a_namespace_that_did_not_opt_in_fails_without_a_run():
    w = World(run_worker="system:serviceaccount:dagster:kubetask-run-worker")
    w.kube.enabled = set()
    w.task("a")
    assert w.reconcile("a") is None
    assert w.status("a")["phase"] == "Failed"
    ready = w.condition("a")
    assert ready["reason"] == "NamespaceNotEnabled"
    assert f'namespace "{NS}"' in ready["message"] and f"kubectl apply -k deploy/tenant -n {NS}" in ready["message"]
    assert w.dagster.submitted == []
    assert ("a", "NamespaceNotEnabled") in [(n, r) for n, r, _, warn in w.kube.events if warn]
    [review] = w.kube.reviews
    assert review == (
        "system:serviceaccount:dagster:kubetask-run-worker",
        ("system:serviceaccounts", "system:serviceaccounts:dagster", "system:authenticated"),
        "create",
        "batch",
        "jobs",
        NS,
    )

    w.kube.enabled = {NS}  # opted in: the next Task runs (once the cached answer expired)
    w.clock.t += 31
    w.task("b")
    w.reconcile("b")
    assert len(w.dagster.submitted) == 1


def test_periodic_pass_respects_backoff_and_retries_everything_when_dagster_returns():
    w = World()
    w.task("a")
    w.task("b")
    w.dagster.unavailable = True
    w.reconcile("a")
    w.reconcile("b")
    w.enqueued.clear()
    w.r.periodic()
    assert w.enqueued == []  # both wait for their backoff retry
    w.dagster.unavailable = False
    w.r.periodic()  # probes Dagster, finds it back
    assert {k[1] for k, _ in w.enqueued} == {"a", "b"}
    w.reconcile("a")
    w.reconcile("b")
    assert len(w.dagster.submitted) == 2


# --- the WorkspaceConfig limit ---------------------------------------------------------------------


def test_task_is_queued_at_the_limit_and_not_submitted():
    w = World()
    w.workspace("default", limit=1)
    w.task("busy", status={"phase": "Running", "dagsterRunId": "r0"})
    w.task("b")
    w.reconcile("b")
    assert w.dagster.submitted == []
    st = w.status("b")
    assert st["phase"] == "Queued"
    ready = w.condition("b")
    assert ready["reason"] == "WorkspaceConcurrencyLimit"
    assert "at most 1 concurrent Task" in ready["message"] and '"default"' in ready["message"]
    assert w.kube.reasons("b") == ["Queued"]
    patches = len(w.kube.status_patches)
    w.reconcile("b")  # nothing changed: no new write, no new Event
    assert len(w.kube.status_patches) == patches and w.kube.reasons("b") == ["Queued"]


def test_limit_counts_only_tasks_of_the_same_workspace_with_a_run():
    w = World()
    w.workspace("small", limit=2)
    w.task("other-ws", status={"phase": "Running", "dagsterRunId": "r0"})  # default WorkspaceConfig
    w.task("pending-no-run", workspace="small", status={"phase": "Pending"})  # no run: holds no slot
    w.task("active", workspace="small", status={"phase": "Pending", "dagsterRunId": "r1"})
    w.task(
        "batch",
        workspace="small",
        annotations={"kubetask.io/executed-by": "rb"},
        status={"phase": "Running", "dagsterRunId": "rb"},
    )
    w.task("new", workspace="small")
    w.reconcile("new")
    assert w.status("new")["phase"] == "Queued"  # active + batch = 2 = limit
    w.reconcile("pending-no-run")  # older than "new", but also no slot
    assert w.status("pending-no-run")["phase"] == "Queued"


def test_fifo_release_when_a_slot_frees():
    w = World()
    w.workspace("default", limit=1)
    w.task("first", status={"phase": "Running", "dagsterRunId": "r0"})
    w.task("older")
    w.task("newer")
    w.reconcile("newer")
    w.reconcile("older")
    assert w.status("older")["phase"] == w.status("newer")["phase"] == "Queued"
    w.enqueued.clear()
    w.kube.write_status("tasks", "first", {"phase": "Completed"})
    w.sync("first")  # the watch event: a slot freed
    assert [k[1] for k, _ in w.enqueued] == ["older"]  # only the head of the queue
    w.reconcile("newer")  # out of order: still behind "older"
    assert w.status("newer")["phase"] == "Queued"
    w.reconcile("older")
    assert w.status("older")["phase"] == "Pending"
    assert [t[2][TAG_NAME] for t in w.dagster.submitted] == ["older"]
    w.reconcile("newer")
    assert w.status("newer")["phase"] == "Queued"  # "older" holds the only slot now


def test_free_slots_admit_several_in_order():
    w = World()
    w.workspace("default", limit=2)
    for name in ("t1", "t2", "t3"):
        w.task(name)
    for name in ("t3", "t2", "t1"):  # workers may take them in any order
        w.reconcile(name)
    assert w.status("t3")["phase"] == "Queued"
    assert {w.status(n)["phase"] for n in ("t1", "t2")} == {"Pending"}


def test_concurrent_admissions_respect_the_limit():
    w = World()
    w.workspace("default", limit=3)
    names = [f"t{i}" for i in range(12)]
    for n in names:
        w.task(n)
    threads = [threading.Thread(target=w.reconcile, args=(n,)) for n in names]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(w.dagster.submitted) == 3
    assert sorted(t[2][TAG_NAME] for t in w.dagster.submitted) == ["t0", "t1", "t2"]


def test_raising_the_limit_releases_waiting_tasks():
    w = World()
    w.workspace("default", limit=1)
    w.task("busy", status={"phase": "Running", "dagsterRunId": "r0"})
    w.task("q1")
    w.task("q2")
    w.reconcile("q1")
    w.reconcile("q2")
    w.enqueued.clear()
    w.workspace("default", limit=3)
    assert {k[1] for k, _ in w.enqueued} == {"q1", "q2"}
    w.reconcile("q1")
    w.reconcile("q2")
    assert len(w.dagster.submitted) == 2


def test_periodic_pass_rechecks_queue_heads_and_new_tasks():
    w = World()
    w.workspace("default", limit=1)
    w.task("busy", status={"phase": "Running", "dagsterRunId": "r0"})
    w.dagster.add_run("STARTED", {}, run_id="r0")
    for n in ("q1", "q2", "q3"):
        w.task(n)
        w.reconcile(n)
    w.task("fresh")  # never looked at yet
    w.enqueued.clear()
    w.r.periodic()
    names = {k[1] for k, _ in w.enqueued}
    assert names == {"q1", "fresh"}  # the head of the queue and the Task without a phase; "busy" runs


# --- stop ------------------------------------------------------------------------------------------


def test_stop_without_a_run_sets_stopped():
    w = World()
    w.task("a", annotations={"kubetask.io/stop": "true"})
    w.reconcile("a")
    assert w.dagster.submitted == []
    assert w.status("a")["phase"] == "Stopped"
    assert w.condition("a")["reason"] == "StopRequested"
    assert w.kube.reasons("a") == ["StopRequested"]


def test_stop_of_a_queued_task_frees_its_place():
    w = World()
    w.workspace("default", limit=1)
    w.task("busy", status={"phase": "Running", "dagsterRunId": "r0"})
    w.task("q1")
    w.reconcile("q1")
    w.kube.objs[("tasks", NS, "q1")]["metadata"]["annotations"]["kubetask.io/stop"] = "true"
    w.sync("q1")
    w.reconcile("q1")
    assert w.status("q1")["phase"] == "Stopped"


def test_stop_without_a_recorded_run_terminates_a_run_found_by_tags():
    w = World()
    t = w.task("a", annotations={"kubetask.io/stop": "true"})
    lost = w.dagster.add_run("QUEUED", run_tags(t))
    w.reconcile("a")
    assert w.dagster.terminated == [lost]
    assert w.status("a")["phase"] == "Stopped"


def test_stop_never_terminates_a_run_that_belongs_to_another_object():
    """A status pointing at another team's run (anyone who may write tasks/status can write it) and
    the stop annotation: the other run is not terminated, and the Task says why."""
    w = World()
    victim = w.task("victim")  # another team's Task (its run id is visible in the Dagster UI)
    theirs = w.dagster.add_run("STARTED", run_tags(victim))
    w.task("a", annotations={"kubetask.io/stop": "true"}, status=running_status(theirs))
    w.reconcile("a")
    assert w.dagster.terminated == []
    assert "RunNotOwned" in w.kube.reasons("a")


def test_stop_with_a_run_terminates_it_once_then_records_the_cancel():
    w = World(grace=5)
    t = w.task("a", annotations={"kubetask.io/stop": "true"}, status=running_status("placeholder"))
    run_id = w.dagster.add_run("STARTED", run_tags(t))
    w.kube.write_status("tasks", "a", {"dagsterRunId": run_id})
    w.sync("a")
    assert w.reconcile("a") is None
    assert w.dagster.terminated == [run_id]
    assert w.kube.reasons("a") == ["StopRequested"]
    w.reconcile("a")  # again soon: no second terminate, no second Event
    assert w.dagster.terminated == [run_id]
    assert w.kube.reasons("a") == ["StopRequested"]
    assert w.status("a")["phase"] == "Running"  # the op records Stopped itself
    # The run got canceled but its op never wrote (e.g. the run worker died): after the grace, the bridge does.
    w.dagster.finish(run_id, "CANCELED", end_time=w.clock.t)
    delay = w.reconcile("a")
    assert delay is not None and 0 < delay <= 5.5
    w.clock.t += 6
    w.reconcile("a")
    assert w.status("a")["phase"] == "Stopped"
    assert w.condition("a")["reason"] == "RunCanceled"


def test_stop_is_retried_when_dagster_is_down():
    w = World()
    t = w.task("a", annotations={"kubetask.io/stop": "true"}, status=running_status("r1"))
    w.dagster.add_run("STARTED", run_tags(t), run_id="r1")
    w.dagster.unavailable = True
    assert (w.reconcile("a") or 0) > 0
    w.dagster.unavailable = False
    w.reconcile("a")
    assert w.dagster.terminated == ["r1"]


# --- deletion --------------------------------------------------------------------------------------


def test_deleting_a_task_with_an_active_run_terminates_the_run():
    w = World()
    t = w.task("a", status=running_status("r1", "a-job-1"))
    w.dagster.add_run("STARTED", run_tags(t), run_id="r1")
    gone = w.kube.objs.pop(("tasks", NS, "a"))
    w.r.observe("DELETED", gone)
    assert w.store.get((NS, "a")) is None
    assert ((NS, "a"), 0.0) in w.enqueued
    w.dagster.unavailable = True
    assert (w.reconcile("a") or 0) > 0  # retried later
    w.dagster.unavailable = False
    assert w.reconcile("a") is None
    assert w.dagster.terminated == ["r1"]


def test_deleting_a_finished_task_terminates_nothing():
    w = World()
    w.task("a", status={"phase": "Completed", "dagsterRunId": "r1"})
    gone = w.kube.objs.pop(("tasks", NS, "a"))
    w.r.observe("DELETED", gone)
    w.reconcile("a")
    assert w.dagster.terminated == []


def test_orphan_sweep_terminates_runs_of_tasks_that_no_longer_exist():
    w = World()
    t = w.task("alive", status=running_status("r1"))
    w.dagster.add_run("STARTED", run_tags(t), run_id="r1")
    w.dagster.add_run(
        "QUEUED",
        {TAG_KIND: "Task", TAG_NAMESPACE: NS, TAG_NAME: "gone", TAG_UID: "u-gone", TAG_GENERATION: "1"},
        run_id="r2",
    )
    w.dagster.add_run(
        "STARTED",
        {TAG_KIND: "Task", TAG_NAMESPACE: NS, TAG_NAME: "alive", TAG_UID: "older-uid", TAG_GENERATION: "1"},
        run_id="r3",
    )
    w.dagster.add_run(
        "SUCCESS",
        {TAG_KIND: "Task", TAG_NAMESPACE: NS, TAG_NAME: "gone2", TAG_UID: "u2", TAG_GENERATION: "1"},
        run_id="r4",
    )
    assert w.r.sweep_orphans() == 2
    assert sorted(w.dagster.terminated) == ["r2", "r3"]


# --- drift -----------------------------------------------------------------------------------------


def test_failed_run_without_status_fails_the_task_with_dagsters_message():
    w = World(grace=5)
    t = w.task("a", status=running_status("r1", "a-job-1"))
    w.kube.jobs.add((NS, "a-job-1"))
    w.dagster.add_run("FAILURE", run_tags(t), end_time=T0 - 10, run_id="r1")
    w.dagster.failure_messages["r1"] = "step prepare_task failed: ConnectionError: API server unreachable"
    assert w.reconcile("a") is None
    st = w.status("a")
    assert st["phase"] == "Failed"
    ready = w.condition("a")
    assert ready["reason"] == "RunFailed"
    assert "API server unreachable" in ready["message"] and "r1" in ready["message"]
    assert w.condition("a", "Succeeded")["status"] == "False"
    assert ("a", "RunFailed") in [(n, r) for n, r, _, warn in w.kube.events if warn]


def test_grace_lets_the_ops_own_write_win():
    w = World(grace=5)
    t = w.task("a", status=running_status("r1", "a-job-1"))
    w.kube.jobs.add((NS, "a-job-1"))
    w.dagster.add_run("SUCCESS", run_tags(t), end_time=T0 - 1, run_id="r1")
    delay = w.reconcile("a")
    assert delay is not None and 3.9 <= delay <= 5.2
    assert w.kube.status_patches == []
    w.kube.write_status("tasks", "a", {"phase": "Completed", "exitCode": 0})  # the op's write lands late
    w.clock.t += 5
    w.reconcile("a")
    assert w.status("a")["phase"] == "Completed"
    assert w.kube.status_patches == []


def test_a_terminal_write_during_the_check_is_not_overwritten():
    w = World(grace=0)
    t = w.task("a", status=running_status("r1", "a-job-1"))
    w.kube.jobs.add((NS, "a-job-1"))
    w.dagster.add_run("FAILURE", run_tags(t), end_time=T0 - 30, run_id="r1")
    w.kube.write_status("tasks", "a", {"phase": "Failed"})  # the store still says Running; the API says Failed
    w.reconcile("a")
    assert w.kube.status_patches == []


def test_canceled_run_stops_the_task():
    w = World(grace=5)
    t = w.task("a", status=running_status("r1", "a-job-1"))
    w.dagster.add_run("CANCELED", run_tags(t), end_time=T0 - 10, run_id="r1")
    w.reconcile("a")
    assert w.status("a")["phase"] == "Stopped"
    assert w.condition("a")["reason"] == "RunCanceled"


def test_successful_run_that_wrote_nothing_fails_the_task():
    w = World(grace=5)
    t = w.task("a", status={"phase": "Pending", "dagsterRunId": "r1"})
    w.dagster.add_run("SUCCESS", run_tags(t), end_time=T0 - 10, run_id="r1")
    w.reconcile("a")
    assert w.status("a")["phase"] == "Failed"
    assert w.condition("a")["reason"] == "RunEndedWithoutStatus"


def test_missing_run_fails_the_task():
    w = World()
    w.task("a", status={"phase": "Pending", "dagsterRunId": "vanished"})
    w.reconcile("a")
    assert w.status("a")["phase"] == "Failed"
    assert w.condition("a")["reason"] == "RunNotFound"


def test_deleted_job_with_a_live_run_is_left_to_the_op():
    w = World()
    t = w.task("a", status=running_status("r1", "a-job-1"))
    w.dagster.add_run("STARTED", run_tags(t), run_id="r1")
    assert w.reconcile("a") is None
    assert w.kube.status_patches == []


def test_deleted_job_and_ended_run_fail_the_task_with_job_deleted():
    w = World(grace=5)
    t = w.task("a", status=running_status("r1", "a-job-1"))
    w.dagster.add_run("FAILURE", run_tags(t), end_time=T0 - 10, run_id="r1")
    w.reconcile("a")
    assert w.status("a")["phase"] == "Failed"
    assert w.condition("a")["reason"] == "JobDeleted"
    assert "a-job-1" in w.condition("a")["message"]


def test_grace_without_end_time_counts_from_first_sight():
    w = World(grace=5)
    t = w.task("a", status={"phase": "Pending", "dagsterRunId": "r1"})
    w.dagster.add_run("FAILURE", run_tags(t), end_time=None, run_id="r1")
    assert (w.reconcile("a") or 0) > 0
    assert w.kube.status_patches == []
    w.clock.t += 6
    w.reconcile("a")
    assert w.status("a")["phase"] == "Failed"


def test_a_reexecution_started_in_dagster_is_adopted_not_failed():
    w = World(grace=0)
    t = w.task("a", status=running_status("r1", "a-job-2"))
    w.kube.jobs.add((NS, "a-job-2"))
    w.dagster.add_run("FAILURE", run_tags(t), end_time=T0 - 30, run_id="r1")
    w.dagster.add_run("STARTED", run_tags(t), run_id="r2")  # "re-execute" in the UI copies the tags
    w.reconcile("a")
    st = w.status("a")
    assert st["phase"] == "Running" and st["dagsterRunId"] == "r2"
    assert "RunAdopted" in w.kube.reasons("a")


def test_status_writes_in_quick_succession_read_the_run_once_and_the_periodic_pass_reads_it_afresh():
    w = World(grace=0)
    w.task("a")
    w.reconcile("a")  # submitted: known to be active without asking Dagster
    run_id = w.status("a")["dagsterRunId"]
    for phase in ("Pending", "Running", "Running"):  # the run's own status writes, each a watch event
        w.kube.write_status("tasks", "a", {"phase": phase})
        w.sync("a")
        assert w.reconcile("a") is None
    assert w.dagster.get_run_calls == 0
    w.clock.t += 2
    w.sync("a")
    w.reconcile("a")
    assert w.dagster.get_run_calls == 1
    # The run ends without the Task's terminal write: the next periodic pass sees it, and the Task
    # settles on that read, within the cache's age
    w.dagster.finish(run_id, "FAILURE", end_time=w.clock.t)
    w.r.periodic()
    assert w.reconcile("a") is None
    assert w.status("a")["phase"] == "Failed"
    assert w.dagster.get_run_calls == 1


def test_periodic_pass_enqueues_tasks_whose_run_finished_or_vanished():
    w = World()
    t1 = w.task("live", status=running_status("r1"))
    t2 = w.task("ended", status=running_status("r2"))
    w.task("vanished", status=running_status("r3"))
    w.dagster.add_run("STARTED", run_tags(t1), run_id="r1")
    w.dagster.add_run("FAILURE", run_tags(t2), end_time=T0, run_id="r2")
    w.enqueued.clear()
    w.r.periodic()
    assert {k[1] for k, _ in w.enqueued} == {"ended", "vanished"}
    w.enqueued.clear()
    w.dagster.unavailable = True
    w.r.periodic()  # no statuses: nothing to decide, no crash
    assert w.enqueued == []


# --- robustness ------------------------------------------------------------------------------------


def test_unexpected_errors_are_contained_and_backed_off(caplog):
    w = World()
    w.task("a")

    def boom(*a: Any, **k: Any) -> Any:
        raise ValueError("kaputt")

    w.dagster.find_runs = boom  # type: ignore[method-assign]
    with caplog.at_level("ERROR"):
        delay = w.reconcile("a")
    assert delay is not None and delay > 0
    assert any("team/a" in r.getMessage() for r in caplog.records)


def test_task_deleted_between_read_and_write_is_dropped():
    w = World()
    w.task("a")
    w.kube.before_patch = lambda ns, name: w.kube.objs.pop(("tasks", ns, name))
    assert w.reconcile("a") is None
    assert w.store.get((NS, "a")) is None


def test_relist_drops_tasks_deleted_while_the_watch_was_away():
    w = World()
    t = w.task("a", status=running_status("r1"))
    w.dagster.add_run("STARTED", run_tags(t), run_id="r1")
    w.kube.objs.pop(("tasks", NS, "a"))
    w.clock.t += 1
    w.r.relist(w.clock())
    assert w.store.get((NS, "a")) is None
    w.reconcile("a")
    assert w.dagster.terminated == ["r1"]


# --- caches and queue --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,stops", [("true", True), ("True", True), (" true ", True), ("false", False), ("", False)]
)
def test_stop_annotation_values(value, stops):
    """kubetask.io/stop is read by vocabulary.stop_requested, as the run's ops read it."""
    w = World()
    w.task("a", annotations={"kubetask.io/stop": value})
    w.reconcile("a")
    assert w.status("a")["phase"] == ("Stopped" if stops else "Pending")
    assert bool(w.dagster.submitted) is not stops
    assert vocabulary.stop_requested({"kubetask.io/stop": value}) is stops


def test_the_usage_a_task_gains_is_counted_once_per_namespace_and_workspace_config():
    def sample(name, **labels):
        return metrics.REGISTRY.get_sample_value(name, {"namespace": "counted", "workspace_config": "llm", **labels}) or 0

    def task(result=None, phase="Running"):
        return {"metadata": {"name": "t", "namespace": "counted"}, "spec": {"workspaceConfigRef": "llm"},
                "status": {"phase": phase, **({"result": result} if result else {})}}

    result = {"usage": {"inputTokens": 100, "outputTokens": 7, "costUSD": 0.25}, "pullRequests": [{"url": "https://x/1"}]}
    count_reported_usage(task(), task(result, "Completed"))
    count_reported_usage(task(result, "Completed"), task(result, "Completed"))  # a re-list: nothing new
    assert sample("kubetask_agent_tokens_total", direction="input") == 100
    assert sample("kubetask_agent_tokens_total", direction="output") == 7
    assert sample("kubetask_agent_cost_usd_total") == 0.25
    assert sample("kubetask_agent_pull_requests_total") == 1
    count_reported_usage(task(result), task({"usage": {"costUSD": 0.5}}))  # a later attempt's own result
    assert sample("kubetask_agent_cost_usd_total") == 0.75
