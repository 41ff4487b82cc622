"""The bridge's BatchRun decisions against a fake Kubernetes API and a fake Dagster (no network)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import pytest

from crd_bridge import watch
from crd_bridge.batchruns import BatchRunReconciler, finalized
from crd_bridge.cache import ObjectStore, decided_fields
from crd_bridge.dagster.client import PARENT_RUN_ID_TAG, DagsterRejected, RunInfo
from crd_bridge.tenancy import TenantGate
from kubetask import vocabulary
from kubetask.domain import runs as contract
from kubetask.vocabulary import TAG_KIND, TAG_UID
from tests.unit.bridge.bridge_fakes import NS, T0, Clock, FakeDagster, FakeKube, task_store

UID = "br-uid-1"


def run_tags(obj: dict[str, Any]) -> dict[str, str]:
    return contract.run_tags(obj, vocabulary.KIND_BATCHRUN)


def identity_tags(obj: dict[str, Any]) -> dict[str, str]:
    return contract.identity_tags(obj, vocabulary.KIND_BATCHRUN)


def config_of(ns: str, name: str, uid: str, parallelism: int) -> dict[str, Any]:
    return {"ref": [ns, name, uid], "parallelism": parallelism}


class Env:
    """A BatchRunReconciler wired to fakes; the Task cache and index are fed like the kopf handlers do."""

    def __init__(self, **kwargs: Any) -> None:
        self.clock = Clock()
        self.kube = FakeKube()
        self.dagster = FakeDagster(self.clock)
        self.tasks = task_store(self.clock)
        self.queued: list[tuple[tuple[str, str], float]] = []
        self.r = BatchRunReconciler(
            self.kube,
            self.dagster,
            ObjectStore(clock=self.clock, trim=decided_fields),
            self.tasks,
            run_config=config_of,
            run_url=lambda i: f"http://dagster/runs/{i}",
            grace=5.0,
            debounce=1.0,
            enqueue=lambda key, delay: self.queued.append((key, delay)),
            clock=self.clock,
            **kwargs,
        )

    # objects
    def batchrun(
        self,
        name: str = "br",
        annotations: dict[str, str] | None = None,
        status: dict[str, Any] | None = None,
        uid: str = UID,
        **spec: Any,
    ) -> dict[str, Any]:
        spec = spec or {"batchRef": "nightly"}
        obj = {
            "apiVersion": "kubetask.io/v1alpha1",
            "kind": "BatchRun",
            "metadata": {"name": name, "namespace": NS, "uid": uid, "generation": 1, "annotations": annotations or {}},
            "spec": spec,
        }
        if status:
            obj["status"] = status
        obj = self.kube.add("batchruns", obj)
        self.r.observe("ADDED", obj)
        return obj

    def status(self, name: str = "br") -> dict[str, Any]:
        return self.kube.status_of("batchruns", name)

    def refresh(self, name: str = "br") -> dict[str, Any]:
        """Deliver the current object as a watch event."""
        obj = self.kube.obj("batchruns", name)
        self.r.observe("MODIFIED", obj)
        return obj

    def task(
        self,
        i: int,
        phase: str | None,
        reason: str | None = None,
        batchrun: str = "br",
        owner: str = UID,
        result: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        name = f"{batchrun}-task-{i}"
        obj = {
            "apiVersion": "kubetask.io/v1alpha1",
            "kind": "Task",
            "metadata": {
                "name": name,
                "namespace": NS,
                "uid": f"t-{batchrun}-{i}",
                "labels": {"kubetask.io/batch-run": batchrun},
                "annotations": {"kubetask.io/executed-by": f"batchrun/{batchrun}"},
                "ownerReferences": [
                    {"apiVersion": "kubetask.io/v1alpha1", "kind": "BatchRun", "name": batchrun, "uid": owner}
                ],
            },
            "spec": {"contexts": []},
        }
        if phase:
            status: dict[str, Any] = {"phase": phase}
            if reason:
                status["conditions"] = [{"type": "Succeeded", "status": "False", "reason": reason, "message": "m"}]
            if result:
                status["result"] = result
            obj["status"] = status
        key = ("tasks", NS, name)
        if key in self.kube.objs:
            self.kube.objs[key]["status"] = copy.deepcopy(obj.get("status") or {})
            self.kube._bump(self.kube.objs[key])
            obj = copy.deepcopy(self.kube.objs[key])
        else:
            obj = self.kube.add("tasks", obj)
        self.tasks.put(obj)  # what the Task part does with the watch event; the BatchRun hears of it
        return obj

    def reconcile(self, name: str = "br") -> float | None:
        return self.r.reconcile_key((NS, name))

    def expand(self, total: int, run_id: str, name: str = "br") -> None:
        """What expand_batch writes once every Task exists."""
        self.kube.write_status(
            "batchruns", name, {"phase": "Running", "dagsterRunId": run_id, "progress": {"total": total}}
        )
        self.refresh(name)

    def running_batchrun(self, total: int = 4, phases: Sequence[str | None] = (), **kwargs: Any) -> str:
        """A submitted, expanded BatchRun whose Tasks have ``phases``; its run id."""
        self.batchrun(**kwargs)
        self.reconcile()
        run_id = self.status()["dagsterRunId"]
        self.expand(total, run_id)
        for i, phase in enumerate(phases):
            self.task(i, phase, "AgentFailed" if phase == "Failed" else None)
        return run_id

    def periodic(self) -> None:
        self.queued.clear()
        self.r.periodic()

    def queued_keys(self) -> set[tuple[str, str]]:
        return {k for k, _ in self.queued}


@pytest.fixture
def env() -> Env:
    return Env()


# --- submission ----------------------------------------------------------------------------------


def test_submits_batch_job_with_tags_run_config_and_records_the_run(env):
    env.kube.add("batches", {"metadata": {"name": "nightly"}, "spec": {"parallelism": 7}})
    env.batchrun()
    assert env.reconcile() is None
    [(job, config, tags)] = env.dagster.submitted
    assert job == "batch_job"
    assert config == {"ref": [NS, "br", UID], "parallelism": 7}
    assert tags == {
        "kubetask.io/kind": "BatchRun",
        "kubetask.io/namespace": NS,
        "kubetask.io/name": "br",
        "kubetask.io/uid": UID,
        "kubetask.io/generation": "1",
        "kubetask.io/batch": "nightly",
    }
    status = env.status()
    assert status["dagsterRunId"] == "run-1" and status["dagsterRunUrl"] == "http://dagster/runs/run-1"
    assert status["phase"] == "Pending" and status["observedGeneration"] == 1
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("Unknown", "RunSubmitted")
    assert env.kube.reasons("br") == ["RunSubmitted"]


@pytest.mark.parametrize(
    "spec, batch, expected",
    [
        ({"batchRef": "nightly", "parallelism": 3}, {"parallelism": 7}, 3),
        ({"batchRef": "nightly"}, {}, 10),
        ({"batchRef": "absent"}, None, 10),  # expand_batch fails it with BatchNotFound
        ({"batchSpec": {"commonContext": [], "variableContexts": [], "parallelism": 4}}, None, 4),
        ({"batchSpec": {"commonContext": [], "variableContexts": []}}, None, 10),
    ],
)
def test_parallelism_from_batchrun_then_batch_then_default(env, spec, batch, expected):
    if batch is not None:
        env.kube.add("batches", {"metadata": {"name": "nightly"}, "spec": batch})
    env.batchrun(**spec)
    env.reconcile()
    assert env.dagster.submitted[0][1]["parallelism"] == expected
    assert ("kubetask.io/batch" in env.dagster.submitted[0][2]) == ("batchRef" in spec)


def test_restart_between_submit_and_status_write_finds_the_run(env):
    obj = env.batchrun()
    env.dagster.add_run("STARTED", run_tags(obj))  # submitted by the previous bridge process
    env.reconcile()
    assert env.dagster.submitted == []
    assert env.status()["dagsterRunId"] == "run-1"


def test_identity_is_uid_and_generation(env):
    obj = env.batchrun()
    assert identity_tags(obj) == {"kubetask.io/kind": "BatchRun", "kubetask.io/uid": UID, "kubetask.io/generation": "1"}


def test_expand_writing_first_causes_a_reread_not_a_second_run(env):
    env.batchrun()
    env.kube.before_patch = lambda ns, name: env.kube.write_status(
        "batchruns", "br", {"phase": "Running", "dagsterRunId": "run-1", "progress": {"total": 2}}
    )
    env.reconcile()
    assert len(env.dagster.submitted) == 1
    status = env.status()
    assert status["dagsterRunId"] == "run-1" and status["phase"] == "Running"


def test_executed_by_batchruns_are_not_submitted(env):
    env.batchrun(annotations={"kubetask.io/executed-by": "schedule/nightly"})
    env.reconcile()
    assert env.dagster.submitted == []
    assert env.kube.status_patches == []


def test_the_run_of_a_scheduled_batchrun_is_found_by_tags_and_followed(env):
    """A schedule tick created the BatchRun and launched its run, which died before expand_batch."""
    obj = env.batchrun(annotations={"kubetask.io/executed-by": "schedule/nightly"})
    run_id = env.dagster.add_run("STARTED", run_tags(obj))
    env.reconcile()
    assert env.dagster.submitted == []
    assert env.status()["dagsterRunId"] == run_id and env.status()["phase"] == "Pending"
    env.dagster.failure_messages[run_id] = "run worker exited"
    finish(env, run_id, "FAILURE")
    env.reconcile()
    status = env.status()
    assert status["phase"] == "Failed" and "run worker exited" in condition_of(status, "Ready")["message"]


def condition_of(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_rejected_submission_fails_the_batchrun(env):
    env.dagster.reject = DagsterRejected("RunConfigValidationInvalid", "bad config")
    env.batchrun()
    env.reconcile()
    status = env.status()
    assert status["phase"] == "Failed" and status["completionTime"]
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["reason"] == "RunSubmissionFailed"
    assert finalized(env.kube.obj("batchruns", "br"))


def test_a_batchrun_in_a_namespace_that_did_not_opt_in_fails_without_a_run():
    env = Env()
    env.r.tenancy = TenantGate(env.kube, "system:serviceaccount:dagster:kubetask-run-worker", clock=env.clock)
    env.kube.enabled = {"elsewhere"}
    env.batchrun()
    env.reconcile()
    status = env.status()
    assert status["phase"] == "Failed" and status["completionTime"]
    ready = condition_of(status, "Ready")
    assert ready["reason"] == "NamespaceNotEnabled" and "deploy/tenant" in ready["message"]
    assert env.dagster.submitted == []
    assert env.kube.reasons("br") == ["NamespaceNotEnabled"]


def test_unavailable_dagster_is_retried_with_backoff_and_noted_once(env):
    env.dagster.unavailable = True
    env.batchrun()
    first = env.reconcile()
    env.clock.t += first
    second = env.reconcile()
    assert first == 1.0 and second == 2.0
    assert env.kube.reasons("br") == ["DagsterUnavailable"]
    assert env.status()["phase"] == "Pending"
    env.dagster.unavailable = False
    env.clock.t += second
    env.reconcile()
    assert env.status()["dagsterRunId"] == "run-1"


# --- progress ------------------------------------------------------------------------------------


def test_progress_counts_cached_tasks_and_not_yet_created_ones_as_pending(env):
    run_id = env.running_batchrun(total=6)
    env.task(0, "Completed")
    env.task(1, "Running")
    env.task(2, "Failed", "AgentFailed")
    env.task(3, "Queued")
    env.task(9, "Failed", "Other", owner="older-uid")  # a leftover of a deleted BatchRun of the same name
    env.reconcile()
    status = env.status()
    assert status["progress"] == {
        "total": 6,
        "pending": 2,
        "queued": 1,
        "running": 1,
        "completed": 1,
        "failed": 1,
        "stopped": 0,
    }
    assert status["failedTasks"] == [{"name": "br-task-2", "reason": "AgentFailed"}]
    assert status["phase"] == "Running" and status["dagsterRunId"] == run_id


def test_progress_sums_the_usage_and_counts_the_pull_requests_the_tasks_reported(env):
    run_id = env.running_batchrun(total=3)
    pr = {"url": "https://git.example/pull/1"}
    env.task(0, "Completed", result={"usage": {"inputTokens": 100, "outputTokens": 20, "costUSD": 0.25}, "pullRequests": [pr]})
    env.task(1, "Running")
    env.reconcile()
    status = env.status()
    assert status["usage"] == {"inputTokens": 100, "outputTokens": 20, "costUSD": 0.25, "tasks": 1}
    assert status["pullRequests"] == 1
    env.clock.t += 2
    env.task(1, "Completed", result={"usage": {"costUSD": 0.5}, "pullRequests": [pr, pr]})
    env.task(2, "Stopped", "BudgetExceeded")
    env.reconcile()
    assert env.status()["usage"]["costUSD"] == 0.75 and env.status()["pullRequests"] == 3
    finish(env, run_id, "SUCCESS")
    env.reconcile()
    status = env.status()
    ready = condition_of(status, "Ready")
    assert status["phase"] == "Stopped" and ready["reason"] == "BudgetExceeded"
    assert "2 Tasks reported 100 input and 20 output tokens, $0.75" in ready["message"]
    assert status["usage"]["tasks"] == 2 and status["pullRequests"] == 3


def test_progress_is_recomputed_not_incremented(env):
    env.running_batchrun(total=2)
    env.task(0, "Running")
    env.reconcile()
    env.clock.t += 2
    env.task(0, "Running")  # the same event again (a re-list, a duplicate watch event)
    env.task(0, "Completed")
    env.task(0, "Completed")
    env.reconcile()
    assert env.status()["progress"]["completed"] == 1 and env.status()["progress"]["running"] == 0


def test_nothing_changed_writes_nothing(env):
    env.running_batchrun(total=2, phases=["Running"])
    env.reconcile()
    writes = len(env.kube.status_patches)
    env.clock.t += 5
    env.refresh()
    assert env.reconcile() is None
    assert len(env.kube.status_patches) == writes


def test_progress_writes_are_debounced_to_one_per_second(env):
    env.running_batchrun(total=3)
    env.task(0, "Running")
    env.reconcile()
    writes = len(env.kube.status_patches)
    env.clock.t += 0.3
    env.task(1, "Running")
    delay = env.reconcile()
    assert delay == pytest.approx(0.71)
    env.task(2, "Running")
    assert env.reconcile() is None  # a look is already due
    assert len(env.kube.status_patches) == writes
    env.clock.t += 0.71
    env.reconcile()
    assert len(env.kube.status_patches) == writes + 1
    assert env.status()["progress"]["running"] == 3


def test_no_progress_before_expand_sets_the_total(env):
    env.batchrun()
    env.reconcile()
    env.clock.t += 2
    env.reconcile()
    assert "progress" not in env.status()


def test_pause_and_resume_set_the_phase(env):
    env.running_batchrun(total=2, phases=["Running"])
    env.reconcile()
    env.clock.t += 2
    env.kube.annotate("br", kubetask_pause="true")
    env.refresh()
    env.reconcile()
    assert env.status()["phase"] == "Paused"
    env.clock.t += 2
    env.kube.annotate("br", kubetask_pause=None)
    env.refresh()
    env.reconcile()
    assert env.status()["phase"] == "Running"
    assert env.kube.reasons("br")[-2:] == ["Paused", "Resumed"]


def test_paused_before_expand_shows_paused(env):
    env.batchrun(annotations={"kubetask.io/pause": "true"})
    env.reconcile()
    env.clock.t += 2
    env.refresh()
    env.reconcile()
    assert env.status()["phase"] == "Paused"


def test_a_terminal_phase_written_by_an_op_is_not_overwritten_while_the_run_ends(env):
    run_id = env.running_batchrun(total=2, phases=["Completed", "Completed"])
    env.reconcile()
    env.kube.write_status(
        "batchruns", "br", {"phase": "Completed", "completionTime": "2027-01-01T00:00:00Z"}
    )  # summarize_batch
    env.refresh()
    env.task(1, "Completed")
    env.clock.t += 2
    writes = len(env.kube.status_patches)
    env.reconcile()
    assert len(env.kube.status_patches) == writes
    env.periodic()  # the run is still active
    assert env.status()["phase"] == "Completed" and not finalized(env.kube.obj("batchruns", "br"))
    env.dagster.finish(run_id, "SUCCESS")
    env.periodic()
    env.reconcile()
    status = env.status()
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "AllTasksCompleted")
    assert status["completionTime"] == "2027-01-01T00:00:00Z"  # the op's time stands
    assert run_id in ready["message"] and finalized(env.kube.obj("batchruns", "br"))


def test_stale_write_is_refused_and_redecided(env):
    env.running_batchrun(total=2)
    env.task(0, "Running")
    env.kube.before_patch = lambda ns, name: env.kube.write_status("batchruns", "br", {"phase": "Failed"})
    env.reconcile()
    assert env.status()["phase"] == "Failed"  # the op's write won; the bridge did not overwrite it


# --- the end of the run --------------------------------------------------------------------------


def finish(env: Env, run_id: str, status: str) -> None:
    env.dagster.finish(run_id, status)
    env.periodic()
    assert (NS, "br") in env.queued_keys()


def test_failed_run_writes_failed_with_exact_counters(env):
    run_id = env.running_batchrun(total=4, phases=["Completed", "Failed", "Completed", "Failed"])
    env.reconcile()
    finish(env, run_id, "FAILURE")
    env.reconcile()
    status = env.status()
    assert status["phase"] == "Failed" and status["completionTime"]
    assert status["progress"] == {
        "total": 4,
        "pending": 0,
        "queued": 0,
        "running": 0,
        "completed": 2,
        "failed": 2,
        "stopped": 0,
    }
    assert [t["name"] for t in status["failedTasks"]] == ["br-task-1", "br-task-3"]
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("False", "TasksFailed")
    assert "2 of 4 Tasks completed, 2 failed" in succeeded["message"]
    assert env.kube.reasons("br")[-1] == "TasksFailed"
    assert finalized(env.kube.obj("batchruns", "br"))
    env.periodic()
    assert (NS, "br") not in env.queued_keys()  # nothing more to do


def test_all_completed_is_completed(env):
    run_id = env.running_batchrun(total=2, phases=["Completed", "Completed"])
    finish(env, run_id, "SUCCESS")
    env.reconcile()
    assert env.status()["phase"] == "Completed"
    assert env.kube.reasons("br")[-1] == "AllTasksCompleted"


def test_tasks_the_run_never_finished_end_after_the_grace(env):
    run_id = env.running_batchrun(total=4, phases=["Completed", "Running", "Queued"])  # task 3 never created
    finish(env, run_id, "FAILURE")
    assert env.reconcile() == pytest.approx(5.01)  # the ops may still be writing
    assert env.kube.obj("tasks", "br-task-1")["status"]["phase"] == "Running"
    looks = env.dagster.get_run_calls
    env.clock.t += 1
    env.task(0, "Completed")  # more events during the grace: no Dagster or list calls, no extra delayed looks
    assert env.reconcile() is None and env.dagster.get_run_calls == looks
    env.clock.t += 4.01
    env.reconcile()
    running = env.kube.obj("tasks", "br-task-1")  # it was running when the run failed: its worker died
    assert running["status"]["phase"] == "Failed"
    assert next(c for c in running["status"]["conditions"] if c["type"] == "Succeeded")["reason"] == "RunFailed"
    never_started = env.kube.obj("tasks", "br-task-2")
    assert never_started["status"]["phase"] == "Stopped"
    assert next(c for c in never_started["status"]["conditions"] if c["type"] == "Succeeded")["reason"] == "RunEnded"
    status = env.status()
    assert status["phase"] == "Failed"
    assert status["progress"] == {
        "total": 4,
        "pending": 1,
        "queued": 0,
        "running": 0,
        "completed": 1,
        "failed": 1,
        "stopped": 1,
    }
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["reason"] == "TasksFailed"
    assert (
        env.r.summary(env.kube.obj("batchruns", "br"))["progress"]["stopped"] == 1
    )  # the index saw the bridge's own Task writes


def test_canceled_run_is_stopped(env):
    run_id = env.running_batchrun(total=2, phases=["Completed", "Stopped"])
    finish(env, run_id, "CANCELED")
    env.reconcile()
    status = env.status()
    assert status["phase"] == "Stopped"
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["reason"] == "RunCanceled"


def test_vanished_run_is_failed_with_run_not_found(env):
    run_id = env.running_batchrun(total=1, phases=["Completed"])
    del env.dagster.runs[run_id]
    env.dagster.order.remove(run_id)
    env.periodic()
    env.reconcile()
    status = env.status()
    assert status["phase"] == "Completed"  # the one Task did complete
    env2 = Env()
    env2.batchrun()
    env2.reconcile()
    run2 = env2.status()["dagsterRunId"]
    env2.dagster.runs.clear()
    env2.dagster.order.clear()
    env2.periodic()
    env2.reconcile()
    s2 = env2.status()
    assert s2["phase"] == "Failed"
    assert next(c for c in s2["conditions"] if c["type"] == "Ready")["reason"] == "RunNotFound" and run2 in str(
        s2["conditions"]
    )


def test_batch_not_found_written_by_expand_keeps_its_reason(env):
    env.batchrun()
    env.reconcile()
    run_id = env.status()["dagsterRunId"]
    env.kube.write_status(
        "batchruns",
        "br",
        {
            "phase": "Failed",
            "completionTime": "2027-01-01T00:00:00Z",
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "BatchNotFound", "message": 'Batch "nightly" not found'}
            ],
        },
    )
    env.refresh()
    finish(env, run_id, "FAILURE")
    env.reconcile()
    status = env.status()
    assert status["phase"] == "Failed"
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "BatchNotFound" and "nightly" in succeeded["message"]
    assert finalized(env.kube.obj("batchruns", "br"))


def test_run_failing_before_expand_is_failed_with_dagsters_reason(env):
    env.batchrun()
    env.reconcile()
    run_id = env.status()["dagsterRunId"]
    env.dagster.failure_messages[run_id] = "step expand_batch failed: boom"
    finish(env, run_id, "FAILURE")
    env.reconcile()
    ready = next(c for c in env.status()["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "RunFailed" and "boom" in ready["message"]


# --- stop and deletion ---------------------------------------------------------------------------


def test_stop_terminates_the_run_once_then_records_stopped(env):
    run_id = env.running_batchrun(total=3, phases=["Completed", "Running", "Queued"])
    env.kube.annotate("br", kubetask_stop="true")
    env.refresh()
    env.reconcile()
    env.reconcile()
    assert env.dagster.terminated == [run_id]
    assert env.kube.reasons("br").count("StopRequested") == 1
    assert env.status()["phase"] == "Running"  # until the run has ended
    env.task(1, "Stopped", "RunTerminated")  # the op deleted its Job
    finish(env, run_id, "CANCELED")
    env.clock.t += 6
    env.reconcile()
    status = env.status()
    assert status["phase"] == "Stopped"
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["reason"] == "StopRequested"
    assert status["progress"]["stopped"] == 2 and status["progress"]["completed"] == 1
    assert env.kube.obj("tasks", "br-task-2")["status"]["phase"] == "Stopped"


def test_stop_before_any_run_stops_without_submitting(env):
    env.batchrun(annotations={"kubetask.io/stop": "true"})
    env.reconcile()
    assert env.dagster.submitted == []
    assert env.status()["phase"] == "Stopped" and finalized(env.kube.obj("batchruns", "br"))


def test_deletion_terminates_the_run(env):
    run_id = env.running_batchrun(total=2, phases=["Running"])
    obj = env.kube.obj("batchruns", "br")
    del env.kube.objs[("batchruns", NS, "br")]
    env.r.observe("DELETED", obj)
    env.reconcile()
    assert env.dagster.terminated == [run_id]


def test_deletion_while_dagster_is_away_is_retried(env):
    run_id = env.running_batchrun(total=2, phases=["Running"])
    obj = env.kube.obj("batchruns", "br")
    del env.kube.objs[("batchruns", NS, "br")]
    env.r.observe("DELETED", obj)
    env.dagster.unavailable = True
    assert env.reconcile() == 1.0
    env.dagster.unavailable = False
    env.periodic()
    assert (NS, "br") in env.queued_keys()
    env.clock.t += 1
    env.reconcile()
    assert env.dagster.terminated == [run_id]


def test_orphan_sweep_terminates_runs_of_missing_batchruns(env):
    env.dagster.add_run(
        "STARTED", {TAG_KIND: "BatchRun", "kubetask.io/namespace": NS, "kubetask.io/name": "gone", TAG_UID: "x"}
    )
    env.running_batchrun(total=1)
    assert env.r.sweep_orphans() == 1
    assert env.dagster.terminated == ["run-1"]


# --- rerun and adoption --------------------------------------------------------------------------


def failed_batchrun(env: Env) -> str:
    run_id = env.running_batchrun(total=3, phases=["Completed", "Failed", "Failed"])
    finish(env, run_id, "FAILURE")
    env.reconcile()
    assert finalized(env.kube.obj("batchruns", "br"))
    return run_id


def test_rerun_failed_reexecutes_from_failure_and_clears_the_annotation(env):
    old = failed_batchrun(env)
    env.kube.annotate("br", kubetask_rerun="failed")
    env.refresh()
    env.reconcile()
    # every Task that did not complete, and the summary: not FROM_FAILURE, which drops mapped
    # steps that never started when a run was terminated midway
    assert env.dagster.reexecuted == [
        (old, "STEPS run_batch_task[task_1] run_batch_task[task_2] summarize_batch", True)
    ]
    new = env.dagster.order[-1]
    obj = env.kube.obj("batchruns", "br")
    assert "kubetask.io/rerun" not in obj["metadata"]["annotations"]
    status = obj["status"]
    assert status["dagsterRunId"] == new and status["dagsterRunUrl"].endswith(new)
    assert status["phase"] == "Running" and "completionTime" not in status
    assert next(c for c in status["conditions"] if c["type"] == "Succeeded")["status"] == "Unknown"
    assert env.kube.reasons("br")[-1] == "RerunStarted"
    assert env.dagster.runs[new].tags[TAG_UID] == UID
    # the rerun's run ends: the failed Tasks completed this time
    env.refresh()
    env.task(1, "Completed")
    env.task(2, "Completed")
    env.clock.t += 2
    env.reconcile()
    finish(env, new, "SUCCESS")
    env.reconcile()
    status = env.status()
    assert status["phase"] == "Completed" and status["progress"]["completed"] == 3 and status["failedTasks"] == []


def test_rerun_launched_before_a_restart_is_not_launched_twice(env):
    old = failed_batchrun(env)
    child = env.dagster.reexecute_run(old)  # launched, then the bridge died before recording it
    env.dagster.reexecuted.clear()
    env.kube.annotate("br", kubetask_rerun="failed")
    env.refresh()
    env.reconcile()
    assert env.dagster.reexecuted == []
    assert env.status()["dagsterRunId"] == child


def test_rerun_of_a_completed_batchrun_only_clears_the_annotation(env):
    run_id = env.running_batchrun(total=1, phases=["Completed"])
    finish(env, run_id, "SUCCESS")
    env.reconcile()
    env.kube.annotate("br", kubetask_rerun="failed")
    env.refresh()
    env.reconcile()
    assert env.dagster.reexecuted == []
    assert "kubetask.io/rerun" not in env.kube.obj("batchruns", "br")["metadata"]["annotations"]
    assert env.kube.reasons("br")[-1] == "NothingToRerun"
    assert env.status()["dagsterRunId"] == run_id


def test_rerun_dagster_finds_nothing_to_rerun(env):
    failed_batchrun(env)
    env.dagster.reexecute_reject = DagsterRejected(
        "DagsterInvalidSubsetError", "No steps needed to be retried in the failed run."
    )
    env.kube.annotate("br", kubetask_rerun="failed")
    env.refresh()
    env.reconcile()
    assert env.kube.reasons("br")[-1] == "NothingToRerun"
    assert "kubetask.io/rerun" not in env.kube.obj("batchruns", "br")["metadata"]["annotations"]
    assert env.status()["phase"] == "Failed"


def test_rerun_with_another_value_is_refused(env):
    failed_batchrun(env)
    env.kube.annotate("br", kubetask_rerun="all")
    env.refresh()
    env.reconcile()
    assert env.dagster.reexecuted == []
    assert env.kube.reasons("br")[-1] == "RerunRefused"
    assert "kubetask.io/rerun" not in env.kube.obj("batchruns", "br")["metadata"]["annotations"]


def test_rerun_waits_until_the_batchrun_is_finished(env):
    env.running_batchrun(total=2, phases=["Running", "Failed"], annotations={"kubetask.io/rerun": "failed"})
    env.reconcile()
    assert env.dagster.reexecuted == []
    assert env.kube.obj("batchruns", "br")["metadata"]["annotations"]["kubetask.io/rerun"] == "failed"


def test_rerun_of_a_stopped_batchrun_removes_the_stop_annotation(env):
    run_id = env.running_batchrun(total=2, phases=["Completed", "Queued"])
    env.kube.annotate("br", kubetask_stop="true")
    env.refresh()
    env.reconcile()
    finish(env, run_id, "CANCELED")
    env.clock.t += 6
    env.reconcile()
    assert env.status()["phase"] == "Stopped"
    env.kube.annotate("br", kubetask_rerun="failed")
    env.refresh()
    env.reconcile()
    annotations = env.kube.obj("batchruns", "br")["metadata"]["annotations"]
    assert "kubetask.io/stop" not in annotations and "kubetask.io/rerun" not in annotations
    assert env.status()["phase"] == "Running"
    assert env.dagster.reexecuted == [
        (run_id, "STEPS run_batch_task[task_1] summarize_batch", True)
    ]  # the never-started Task too


def test_a_reexecution_started_in_dagster_is_adopted(env):
    old = failed_batchrun(env)
    ui = env.dagster.add_run("STARTED", {**env.dagster.runs[old].tags, PARENT_RUN_ID_TAG: old})
    env.periodic()
    assert (NS, "br") in env.queued_keys()
    env.reconcile()
    status = env.status()
    assert status["dagsterRunId"] == ui and status["phase"] == "Running" and "completionTime" not in status
    assert env.kube.reasons("br")[-1] == "RunAdopted"
    env.task(1, "Running")
    env.clock.t += 2
    env.reconcile()
    assert env.status()["progress"]["running"] == 1


def test_a_reexecution_that_ended_before_the_bridge_looked_is_adopted_at_the_end(env):
    run_id = env.running_batchrun(total=2, phases=["Completed", "Failed"])
    env.dagster.finish(run_id, "FAILURE")
    ui = env.dagster.add_run("SUCCESS", {**env.dagster.runs[run_id].tags, PARENT_RUN_ID_TAG: run_id}, end_time=T0)
    env.task(1, "Completed")
    env.periodic()
    env.reconcile()  # follows the newer run instead of finalizing the old one
    assert env.status()["dagsterRunId"] == ui
    env.periodic()
    env.reconcile()
    status = env.status()
    assert (
        status["phase"] == "Completed"
        and ui in next(c for c in status["conditions"] if c["type"] == "Ready")["message"]
    )


def test_an_older_active_run_is_not_adopted(env):
    stale = env.dagster.add_run("STARTED", {TAG_KIND: "BatchRun", TAG_UID: UID})
    env.dagster.runs[stale] = RunInfo(stale, "STARTED", {TAG_KIND: "BatchRun", TAG_UID: UID}, creation_time=T0 - 100)
    failed_batchrun(env)
    current = env.status()["dagsterRunId"]
    env.periodic()
    env.reconcile()
    assert env.status()["dagsterRunId"] == current


def test_an_op_switching_to_a_new_run_reopens_the_batchrun(env):
    """A re-execution of all steps: its expand_batch records its run id on the finished BatchRun."""
    failed_batchrun(env)
    new = env.dagster.add_run("STARTED", {TAG_KIND: "BatchRun", TAG_UID: UID})
    env.kube.write_status("batchruns", "br", {"dagsterRunId": new})
    env.refresh()
    env.r._active = {}  # not seen by a periodic pass yet
    env.task(1, "Running")
    env.clock.t += 2
    env.reconcile()
    status = env.status()
    assert status["phase"] == "Running" and "completionTime" not in status
    assert next(c for c in status["conditions"] if c["type"] == "Succeeded")["status"] == "Unknown"


# --- index, store, periodic ----------------------------------------------------------------------


def test_task_cache_changes_wake_the_batchruns_whose_rows_changed(env):
    """The Task cache's batch-run index follows label moves, deletions and re-lists; only known BatchRuns wake."""
    for name in ("a", "b", "c"):
        env.batchrun(name, uid=f"uid-{name}")

    def task(name, batchrun, phase, uid="u"):
        labels = {"kubetask.io/batch-run": batchrun} if batchrun else {}
        return {
            "metadata": {
                "name": name,
                "namespace": NS,
                "uid": uid,
                "labels": labels,
                "ownerReferences": [{"kind": "BatchRun", "uid": "o"}],
            },
            "status": {"phase": phase},
        }

    def woken(change) -> set[tuple[str, str]]:
        env.queued.clear()
        change()
        return env.queued_keys()

    assert woken(lambda: env.tasks.put(task("a-task-1", "a", "Running"))) == {(NS, "a")}
    assert woken(lambda: env.tasks.put(task("a-task-0", "a", "Completed"))) == {(NS, "a")}
    assert env.r.rows(NS, "a", "o") == [("a-task-0", "Completed", None), ("a-task-1", "Running", None)]
    assert env.r.rows(NS, "a", "other") == []
    assert woken(lambda: env.tasks.put(task("a-task-1", "b", "Running"))) == {(NS, "a"), (NS, "b")}
    assert woken(lambda: env.tasks.remove((NS, "a-task-1"), uid="someone-else")) == set()
    assert woken(lambda: env.tasks.remove((NS, "a-task-1"))) == {(NS, "b")}
    assert woken(lambda: env.tasks.put(task("plain", None, "Running"))) == set()
    assert woken(lambda: env.tasks.put(task("zz-task-0", "zz", "Running"))) == set()  # no such BatchRun
    env.tasks.replace([task("c-task-0", "c", "Failed")], listed_since=env.clock.t + 1)
    assert env.r.rows(NS, "a") == [] and env.r.rows(NS, "c") == [("c-task-0", "Failed", None)]


def test_task_events_index_the_caches_newest_version(env):
    env.running_batchrun(total=1)
    newer = env.task(0, "Completed")
    older = copy.deepcopy(newer)
    older["metadata"]["resourceVersion"] = "1"
    older["status"] = {"phase": "Running"}
    env.queued.clear()
    env.tasks.put(older)  # refused by the cache: it holds a newer version
    assert env.r.rows(NS, "br", UID) == [("br-task-0", "Completed", None)]
    assert env.queued == []  # and nothing changed, so nothing wakes


def test_store_keeps_the_newest_and_replace_drops_unseen(env):
    store = ObjectStore(clock=env.clock)
    a = {"metadata": {"name": "a", "namespace": NS, "uid": "1", "resourceVersion": "5"}}
    store.put(a)
    store.put({"metadata": {"name": "a", "namespace": NS, "uid": "1", "resourceVersion": "4"}})
    assert store.get((NS, "a"))["metadata"]["resourceVersion"] == "5"
    env.clock.t += 10
    assert [o["metadata"]["name"] for o in store.replace([], env.clock.t - 1)] == ["a"]


def test_relist_reconciles_everything_and_notices_deletions(env):
    env.running_batchrun(total=1, phases=["Running"])
    obj = env.kube.obj("batchruns", "br")
    del env.kube.objs[("batchruns", NS, "br")]
    env.clock.t += 10
    env.queued.clear()
    env.r.relist(env.clock.t - 1)
    assert env.r.store.get((NS, "br")) is None
    env.reconcile()
    assert env.dagster.terminated == [obj["status"]["dagsterRunId"]]


def test_reconcile_never_raises(env):
    env.batchrun()
    env.kube.get = None  # type: ignore[assignment]  (a bug: calling it raises TypeError)
    assert env.reconcile() == 1.0


def test_periodic_survives_dagster_being_away(env):
    env.running_batchrun(total=1)
    env.dagster.unavailable = True
    env.periodic()
    assert (NS, "br") in env.queued_keys()


# --- wiring ----------------------------------------------------------------------------------------


def test_runtime_registers_a_batchrun_event_handler():
    import kubernetes

    from crd_bridge.__main__ import Runtime
    from crd_bridge.config import BridgeConfig

    configuration = kubernetes.client.Configuration()
    configuration.host = "https://127.0.0.1:6443"
    rt = Runtime(BridgeConfig(), configuration)
    ids = {h.id for h in watch.registry(rt)._watching.get_all_handlers()}
    assert "batchruns" in ids and "tasks" in ids
    assert rt.batchruns.job == "batch_job" and rt.batchruns.debounce == 1.0


@pytest.mark.parametrize(
    "phase, final",
    [
        ("Completed", True),
        ("Failed", True),
        ("Stopped", True),
        ("Running", False),
        ("Paused", False),
        ("Pending", False),
    ],
)
def test_only_terminal_phases_with_the_runs_outcome_are_final_and_left_alone(env, phase, final):
    run_id = env.dagster.add_run("SUCCESS", {}, end_time=T0 - 60)
    outcome = {
        "type": "Succeeded",
        "status": "True" if phase == "Completed" else "False",
        "reason": "x",
        "message": f"Dagster run {run_id} ended",
    }
    env.batchrun(status={"phase": phase, "dagsterRunId": run_id, "conditions": [outcome]})
    assert finalized(env.kube.obj("batchruns", "br")) is final
    if final:  # nothing to do: no submission, no status write, no Event
        assert env.reconcile() is None
        assert (env.dagster.submitted, env.kube.status_patches, env.kube.events) == ([], [], [])
