"""What the bridge tells per WorkspaceConfig: its status counts (level-based from the Task cache, written
only when they change, as a patch of ``running`` and ``queued`` alone) and its metrics."""

from __future__ import annotations

from bridge_fakes import NS, Clock, FakeKube, task_store

from crd_bridge import metrics
from crd_bridge.cache import WorkspaceLimits
from crd_bridge.workspaces import TaskTimings, WorkspaceCounts


def _task(name: str, phase: str | None, workspace: str = "default") -> dict:
    obj = {"apiVersion": "kubetask.io/v1alpha1", "kind": "Task",
           "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}"},
           "spec": {"workspaceConfigRef": workspace}}
    if phase:
        obj["status"] = {"phase": phase}
    return obj


def _setup(*workspaces: str):
    kube, store = FakeKube(), task_store(Clock())
    limits = WorkspaceLimits(kube)
    for name in workspaces:
        limits.put(kube.add("workspaceconfigs", {"metadata": {"name": name}, "spec": {}}))
    return kube, store, WorkspaceCounts(kube, store, limits)


def test_counts_running_and_queued_tasks_of_each_workspace_and_writes_only_changes():
    kube, store, counts = _setup("default", "other")
    for task in (_task("a", "Running"), _task("b", "Queued"), _task("c", "Queued"), _task("d", "Completed"),
                 _task("e", None), _task("f", "Running", workspace="other")):
        store.put(task)
    kube.write_status("workspaceconfigs", "default", {"rateLimitedUntil": "2030-01-01T00:00:00Z"})

    counts.periodic()
    assert kube.status_of("workspaceconfigs", "default") == {
        "rateLimitedUntil": "2030-01-01T00:00:00Z", "running": 1, "queued": 2}  # the run workers' fields stay
    assert kube.status_of("workspaceconfigs", "other") == {"running": 1, "queued": 0}
    assert sorted(name for name, _ in kube.status_patches) == ["default", "other"]

    gauge = lambda ws, state: metrics.REGISTRY.get_sample_value(  # noqa: E731
        "kubetask_workspace_tasks", {"namespace": NS, "workspace_config": ws, "state": state})
    assert (gauge("default", "running"), gauge("default", "queued"), gauge("other", "running")) == (1, 2, 1)

    counts.periodic()  # nothing changed: nothing written
    assert len(kube.status_patches) == 2

    store.put(_task("b", "Running"))
    store.remove((NS, "a"))
    counts.periodic()
    assert kube.status_patches[2:] == [("default", {"running": 1, "queued": 1})]


def test_a_workspace_config_deleted_meanwhile_is_skipped():
    kube, store, counts = _setup("gone")
    store.put(_task("a", "Running", workspace="gone"))
    kube.delete("workspaceconfigs", NS, "gone")
    counts.periodic()  # a 404: skipped, no error
    assert kube.status_patches == []


def test_task_timings_observe_the_time_queued_and_the_duration_by_outcome():
    clock = Clock()
    timings = TaskTimings(clock)
    labels = {"namespace": NS, "workspace_config": "timed"}

    def sample(name: str, **extra: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, {**labels, **extra}) or 0.0

    queued_before = sample("kubetask_task_queued_seconds_sum")
    done_before = sample("kubetask_task_duration_seconds_count", outcome="Completed")
    queued = _task("t", "Queued", workspace="timed")
    timings(None, queued)
    clock.t += 7
    timings(queued, queued)  # another write while Queued: still timed from the first
    clock.t += 5
    running = _task("t", "Running", workspace="timed")
    timings(queued, running)
    assert sample("kubetask_task_queued_seconds_sum") - queued_before == 12

    done = _task("t", "Completed", workspace="timed")
    done["status"] |= {"startTime": "2030-01-01T00:00:00Z", "completionTime": "2030-01-01T00:01:30Z"}
    timings(running, done)
    timings(done, done)  # seen again (a re-list): counted once
    assert sample("kubetask_task_duration_seconds_count", outcome="Completed") - done_before == 1
    assert sample("kubetask_task_duration_seconds_bucket", outcome="Completed", le="120.0") >= 1
    timings(None, done)  # a first listing of a finished Task is not a new end
    assert sample("kubetask_task_duration_seconds_count", outcome="Completed") - done_before == 1
