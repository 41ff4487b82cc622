"""The bridge's WorkspaceConfig counts: level-based from the Task cache, written only when they change,
as a patch of ``running`` and ``queued`` alone."""

from __future__ import annotations

from bridge_fakes import NS, Clock, FakeKube, task_store

from crd_bridge.cache import WorkspaceLimits
from crd_bridge.workspaces import WorkspaceCounts


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
