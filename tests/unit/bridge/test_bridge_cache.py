"""The bridge's caches: ObjectStore (newest version wins, indexes, subscribers, re-list), WorkQueue."""

from __future__ import annotations

import threading
from typing import Any

from crd_bridge.cache import ObjectStore, WorkQueue, decided_fields
from tests.unit.bridge.bridge_fakes import NS, Clock


def obj(name: str, *, uid: str = "u", rv: int | None = None, ws: str | None = None, ns: str = NS) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": uid}
    if rv is not None:
        meta["resourceVersion"] = str(rv)
    return {"metadata": meta, "spec": {"ws": ws} if ws else {}}


def by_ws(o: dict[str, Any]) -> list[tuple[str, str]]:
    ws = o["spec"].get("ws")
    return [(o["metadata"]["namespace"], ws)] if ws else []


def names(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objs)


def test_an_index_follows_puts_moves_and_removals():
    store = ObjectStore({"ws": by_ws})
    store.put(obj("a", ws="x"))
    store.put(obj("b", uid="ub", ws="x"))
    store.put(obj("c", uid="uc"))  # no index value: in the store, in no index entry
    assert names(store.by_index("ws", (NS, "x"))) == ["a", "b"]
    store.put(obj("a", ws="y"))  # moved
    assert names(store.by_index("ws", (NS, "x"))) == ["b"] and names(store.by_index("ws", (NS, "y"))) == ["a"]
    assert store.remove((NS, "b"), uid="someone-else") is None  # another object of that name: kept
    assert names(store.by_index("ws", (NS, "x"))) == ["b"]
    store.remove((NS, "b"))
    assert store.by_index("ws", (NS, "x")) == [] and len(store) == 2
    assert store.by_index("ws", ("other-namespace", "y")) == []


def test_a_refused_older_version_changes_no_index():
    store = ObjectStore({"ws": by_ws})
    store.put(obj("a", rv=10, ws="x"))
    assert store.put(obj("a", rv=9, ws="y"))["metadata"]["resourceVersion"] == "10"  # the newer one stays
    assert names(store.by_index("ws", (NS, "x"))) == ["a"] and store.by_index("ws", (NS, "y")) == []
    store.put(obj("a", uid="recreated", rv=1, ws="y"))  # a new object of that name: any version
    assert names(store.by_index("ws", (NS, "y"))) == ["a"] and store.by_index("ws", (NS, "x")) == []


def test_several_indexes_and_several_values_per_object():
    store = ObjectStore({"ws": by_ws, "letters": lambda o: list(o["metadata"]["name"])})
    store.put(obj("ab", ws="x"))
    store.put(obj("bc", uid="u2"))
    assert names(store.by_index("letters", "b")) == ["ab", "bc"] and names(store.by_index("letters", "c")) == ["bc"]
    assert names(store.by_index("ws", (NS, "x"))) == ["ab"]


def test_subscribers_hear_every_change_after_it_is_made():
    store = ObjectStore({"ws": by_ws})
    heard: list[tuple[str | None, str | None, list[str]]] = []

    def listener(old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        version = lambda o: None if o is None else o["metadata"].get("resourceVersion")  # noqa: E731
        heard.append((version(old), version(new), names(store.by_index("ws", (NS, "x")))))

    store.subscribe(listener)
    store.put(obj("a", rv=1, ws="x"))
    store.put(obj("a", rv=0, ws="x"))  # refused: no change, nothing heard
    store.put(obj("a", rv=2))
    store.remove((NS, "a"))
    store.remove((NS, "a"))  # nothing there: nothing heard
    assert heard == [(None, "1", ["a"]), ("1", "2", []), ("2", None, [])]


def test_replace_drops_what_the_list_lacks_unless_an_event_touched_it_since():
    clock = Clock(100.0)
    store = ObjectStore({"ws": by_ws}, clock=clock)
    store.put(obj("old", ws="x"))
    store.put(obj("elsewhere", uid="u3", ns="other"))
    clock.t = 110.0
    store.put(obj("recent", uid="u2", ws="x"))  # an event after the list was taken
    heard: list[Any] = []
    store.subscribe(lambda old, new: heard.append((old["metadata"]["name"] if old else None, new is None)))
    dropped = store.replace([obj("listed", uid="u4", ws="x")], listed_since=105.0, namespaces=[NS])
    assert names(dropped) == ["old"]
    assert names(store.snapshot()) == ["elsewhere", "listed", "recent"]  # other namespaces are not judged
    assert names(store.by_index("ws", (NS, "x"))) == ["listed", "recent"]
    assert ("old", True) in heard and (None, False) in heard


def test_store_ignores_older_versions_of_the_same_object():
    store = ObjectStore()
    new = {
        "metadata": {"name": "a", "namespace": NS, "uid": "u", "resourceVersion": "10"},
        "status": {"phase": "Running"},
    }
    old = {
        "metadata": {"name": "a", "namespace": NS, "uid": "u", "resourceVersion": "9"},
        "status": {"phase": "Pending"},
    }
    store.put(new)
    store.put(old)
    assert store.get((NS, "a"))["status"]["phase"] == "Running"
    recreated = {"metadata": {"name": "a", "namespace": NS, "uid": "u2", "resourceVersion": "5"}}
    store.put(recreated)
    assert store.get((NS, "a"))["metadata"]["uid"] == "u2"


def test_work_queue_deduplicates_and_requeues_keys_added_while_processing():
    q = WorkQueue()
    q.add(("n", "a"))
    q.add(("n", "a"))
    q.add(("n", "b"))
    assert len(q) == 2
    k = q.get(timeout=0)
    assert k == ("n", "a")
    q.add(("n", "a"))  # while processing: not handed to a second worker
    assert q.get(timeout=0) == ("n", "b")
    assert q.get(timeout=0) is None
    q.done(("n", "a"))
    assert q.get(timeout=0) == ("n", "a")


def test_work_queue_delays():
    clock = Clock(0.0)
    q = WorkQueue(clock=clock)
    q.add_after(("n", "a"), 5)
    assert q.get(timeout=0) is None
    clock.t = 5.0
    assert q.get(timeout=0) == ("n", "a")


def test_work_queue_shutdown_wakes_workers():
    q = WorkQueue()
    got: list[Any] = []
    th = threading.Thread(target=lambda: got.append(q.get()))
    th.start()
    q.shutdown()
    th.join(timeout=5)
    assert got == [None]


def test_the_cache_keeps_only_what_the_bridge_decides_on():
    big = "x" * 100_000
    task = {
        "apiVersion": "kubetask.io/v1alpha1", "kind": "Task",
        "metadata": {"name": "t", "namespace": "ns", "uid": "u", "resourceVersion": "5",
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": big, "kubetask.io/stop": "true"},
                     "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
        "spec": {"workspaceConfigRef": "ws", "timeout": "5m",
                 "contexts": [{"type": "File", "file": {"filePath": "/a", "source": {"inline": big}}}]},
        "status": {"phase": "Running", "dagsterRunId": "r"},
    }
    kept = decided_fields(task)
    assert kept["spec"] == {"workspaceConfigRef": "ws", "timeout": "5m"}
    assert kept["metadata"]["annotations"] == {"kubetask.io/stop": "true"} and "managedFields" not in kept["metadata"]
    assert kept["status"] == task["status"] and kept["kind"] == "Task" and kept["apiVersion"] == task["apiVersion"]
    assert len(repr(kept)) < 1000
    batchrun = {"kind": "BatchRun", "metadata": {"name": "b", "namespace": "ns"},
                "spec": {"batchSpec": {"parallelism": 3, "commonContext": [big], "variableContexts": [[big]] * 3}}}
    assert decided_fields(batchrun)["spec"] == {"batchSpec": {"parallelism": 3}}

    reported = {**task, "status": {"phase": "Completed", "result": {
        "summary": "s" * 4000, "usage": {"costUSD": 0.5}, "pullRequests": [{"url": "https://x/1"}], "outputs": {"k": "v"}}}}
    # of the agent's result the bridge keeps what it sums and counts
    assert decided_fields(reported)["status"] == {
        "phase": "Completed", "result": {"usage": {"costUSD": 0.5}, "pullRequests": [{"url": "https://x/1"}]}}

    seen = []
    store = ObjectStore(trim=decided_fields)
    store.subscribe(lambda old, new: seen.append(new))
    store.put(task)
    assert store.get(("ns", "t")) == kept and seen == [kept]
    assert task["spec"]["contexts"]  # the caller's object is not changed
