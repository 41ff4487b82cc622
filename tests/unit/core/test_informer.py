"""The shared list+watch cache (``kubetask.kube.informer``) over a fake list function and a fake watch."""

from __future__ import annotations

import queue
import threading
import time
from types import SimpleNamespace

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from kubetask.kube import informer as informer_mod
from kubetask.kube.informer import Informer, InformerRegistry

NS = "team-a"
SELECTOR = "kubetask.io/task=t1"
JOB = "batch.kubernetes.io/job-name"
END = object()  # a quiet end of one watch


def obj(name: str, job: str | None = None, rv: str = "1", **extra):
    labels = {JOB: job} if job else {}
    return SimpleNamespace(metadata=SimpleNamespace(name=name, labels=labels, resource_version=rv), **extra)


class FakeApi:
    """``list_fn`` and the scripted events of the watches streamed over it."""

    def __init__(self, *listings: list):
        self.listings = list(listings) or [[]]
        self.list_calls: list[tuple[str, dict]] = []
        self.watch_calls: list[dict] = []
        self.events: queue.Queue = queue.Queue()
        self.release_list = threading.Event()
        self.release_list.set()

    def list_fn(self, namespace, **kwargs):
        self.release_list.wait(5)
        self.list_calls.append((namespace, kwargs))
        items = self.listings[min(len(self.list_calls), len(self.listings)) - 1]
        return SimpleNamespace(items=items, metadata=SimpleNamespace(resource_version=f"list-{len(self.list_calls)}"))


class FakeWatch:
    """Stands in for ``kubernetes.watch.Watch``: streams ``FakeApi.events`` (events, exceptions, END)."""

    def __init__(self):
        self.resource_version = None
        self.stopped = False

    def stream(self, fn, namespace, **kwargs):
        api: FakeApi = fn.__self__
        api.watch_calls.append({"namespace": namespace, **kwargs})
        while True:
            item = api.events.get(timeout=10)
            if item is END:
                self.resource_version = f"watch-end-{len(api.watch_calls)}"
                return
            if isinstance(item, BaseException):
                raise item
            self.resource_version = item["object"].metadata.resource_version
            yield item

    def stop(self):
        self.stopped = True


@pytest.fixture
def sleeps(monkeypatch):
    """The informer's backoff sleeps, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(kubernetes.watch, "Watch", FakeWatch)
    monkeypatch.setattr(informer_mod, "time", SimpleNamespace(sleep=recorded.append))
    return recorded


@pytest.fixture
def started(sleeps):
    """Start informers and stop them (waking their watch) after the test."""
    made: list[tuple[Informer, FakeApi]] = []

    def start(api: FakeApi, index_label: str | None = JOB, selector: str = SELECTOR) -> Informer:
        inf = Informer(api.list_fn, NS, selector, "pods", index_label)
        made.append((inf, api))
        return inf

    yield start
    for inf, api in made:
        inf.stop()
        api.release_list.set()
        api.events.put({"type": "BOOKMARK", "object": obj("wake")})
        inf._thread.join(5)
        assert not inf._thread.is_alive()


def until(inf: Informer, predicate, timeout: float = 5.0) -> None:
    """Wait on the informer's change notifications until ``predicate()`` holds (fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = inf.version
        if predicate():
            return
        remaining = deadline - time.monotonic()
        assert remaining > 0, "condition not reached"
        inf.wait_for_change(seen, remaining)


def test_first_list_fills_the_cache(started):
    api = FakeApi([obj("p1", "job-1"), obj("p2", "job-2")])
    inf = started(api)
    assert inf.wait_synced(5)
    assert api.list_calls[0] == (NS, {"label_selector": SELECTOR})
    assert inf.get("p1").metadata.name == "p1" and inf.get("p2") is not None and inf.get("nope") is None
    assert inf.version >= 1
    until(inf, lambda: api.watch_calls)
    assert api.watch_calls[0]["resource_version"] == "list-1"
    assert api.watch_calls[0]["label_selector"] == SELECTOR and api.watch_calls[0]["namespace"] == NS


def test_not_synced_until_the_list_returns(started):
    api = FakeApi([obj("p1")])
    api.release_list.clear()
    inf = started(api)
    assert not inf.wait_synced(0.05)
    assert inf.get("p1") is None
    api.release_list.set()
    assert inf.wait_synced(5) and inf.get("p1") is not None


def test_index_by_label(started):
    api = FakeApi([obj("p1", "job-1"), obj("p2", "job-1"), obj("p3", "job-2"), obj("unlabelled")])
    inf = started(api)
    assert inf.wait_synced(5)
    assert sorted(p.metadata.name for p in inf.by_index("job-1")) == ["p1", "p2"]
    assert [p.metadata.name for p in inf.by_index("job-2")] == ["p3"]
    assert inf.by_index("job-3") == []
    assert inf.get("unlabelled") is not None


def test_without_an_index_label_nothing_is_indexed(started):
    api = FakeApi([obj("p1", "job-1")])
    inf = started(api, index_label=None)
    assert inf.wait_synced(5)
    assert inf.by_index("job-1") == [] and inf.get("p1") is not None


def test_an_update_wakes_wait_for_change_and_moves_the_index(started):
    api = FakeApi([obj("p1", "job-1", phase="Pending")])
    inf = started(api)
    assert inf.wait_synced(5)
    seen = inf.version
    api.events.put({"type": "MODIFIED", "object": obj("p1", "job-2", rv="7", phase="Running")})
    new = inf.wait_for_change(seen, 5)
    assert new == seen + 1
    assert inf.get("p1").phase == "Running"
    assert inf.by_index("job-1") == [] and [p.phase for p in inf.by_index("job-2")] == ["Running"]


def test_wait_for_change_returns_the_same_version_when_nothing_changed(started):
    api = FakeApi([obj("p1")])
    inf = started(api)
    assert inf.wait_synced(5)
    seen = inf.version
    assert inf.wait_for_change(seen, 0.05) == seen


def test_added_and_deleted(started):
    api = FakeApi([obj("p1", "job-1")])
    inf = started(api)
    assert inf.wait_synced(5)
    api.events.put({"type": "ADDED", "object": obj("p2", "job-1", rv="2")})
    until(inf, lambda: inf.get("p2") is not None)
    assert len(inf.by_index("job-1")) == 2
    api.events.put({"type": "DELETED", "object": obj("p1", "job-1", rv="3")})
    api.events.put({"type": "DELETED", "object": obj("p2", "job-1", rv="4")})
    until(inf, lambda: inf.get("p2") is None)
    assert inf.get("p1") is None and inf.by_index("job-1") == []
    assert "job-1" not in inf._index  # an emptied bucket is dropped


def test_other_event_types_are_ignored(started):
    api = FakeApi([obj("p1")])
    inf = started(api)
    assert inf.wait_synced(5)
    seen = inf.version
    api.events.put({"type": "BOOKMARK", "object": obj("p1", rv="5")})
    api.events.put({"type": "ERROR", "object": obj("p1", rv="5")})
    api.events.put({"type": "ADDED", "object": obj("p9", rv="6")})
    until(inf, lambda: inf.get("p9") is not None)
    assert inf.version == seen + 1  # only the ADDED counted


def test_a_quiet_end_of_the_watch_resumes_without_listing(started, sleeps):
    api = FakeApi([obj("p1")])
    inf = started(api)
    assert inf.wait_synced(5)
    api.events.put({"type": "ADDED", "object": obj("p2", rv="42")})
    api.events.put(END)
    api.events.put({"type": "ADDED", "object": obj("p3", rv="43")})
    until(inf, lambda: inf.get("p3") is not None)
    assert len(api.list_calls) == 1 and sleeps == []
    assert [c["resource_version"] for c in api.watch_calls] == ["list-1", "watch-end-1"]


def test_a_failing_watch_backs_off_and_lists_again(started, sleeps):
    api = FakeApi([obj("p1"), obj("gone-later")], [obj("p1"), obj("new")])
    inf = started(api)
    assert inf.wait_synced(5)
    api.events.put(ApiException(status=500, reason="Internal Server Error"))
    until(inf, lambda: inf.get("new") is not None)
    assert len(api.list_calls) == 2 and sleeps == [0.5]
    assert inf.get("gone-later") is None  # the relist replaced the cache
    assert api.watch_calls[-1]["resource_version"] == "list-2"


def test_consecutive_failures_double_the_backoff_and_an_event_resets_it(started, sleeps):
    api = FakeApi([obj("p1")])
    inf = started(api)
    assert inf.wait_synced(5)
    api.events.put(ConnectionResetError("dropped"))
    api.events.put(ApiException(status=503, reason="Unavailable"))
    until(inf, lambda: len(api.list_calls) == 3)
    api.events.put({"type": "ADDED", "object": obj("p2", rv="9")})
    api.events.put(ConnectionResetError("dropped again"))
    until(inf, lambda: len(api.list_calls) == 4)
    assert sleeps == [0.5, 1.0, 0.5]


def test_backoff_is_capped(started, sleeps):
    api = FakeApi([obj("p1")])
    inf = started(api)
    assert inf.wait_synced(5)
    for _ in range(8):
        api.events.put(ConnectionResetError("dropped"))
    until(inf, lambda: len(api.list_calls) == 9)
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_gone_410_lists_again_at_once(started, sleeps):
    api = FakeApi([obj("old")], [obj("fresh")])
    inf = started(api)
    assert inf.wait_synced(5)
    api.events.put(ApiException(status=410, reason="Gone"))
    until(inf, lambda: inf.get("fresh") is not None)
    assert sleeps == [] and inf.get("old") is None and len(api.list_calls) == 2


def test_a_stopped_informer_stops_its_watch(sleeps, monkeypatch):
    api = FakeApi([obj("p1")])
    watches: list[FakeWatch] = []

    class Recording(FakeWatch):
        def __init__(self):
            super().__init__()
            watches.append(self)

    monkeypatch.setattr(kubernetes.watch, "Watch", Recording)
    inf = Informer(api.list_fn, NS, SELECTOR, "pods", JOB)
    assert inf.wait_synced(5)
    inf.stop()
    api.events.put({"type": "ADDED", "object": obj("p2", rv="2")})
    inf._thread.join(5)
    assert not inf._thread.is_alive()
    assert watches and watches[-1].stopped
    assert inf.get("p2") is None  # the event after stop() is not applied


def test_registry_shares_one_informer_per_kind_namespace_and_selector(sleeps):
    api = FakeApi([obj("p1")])
    registry = InformerRegistry()
    results: list[Informer] = []
    barrier = threading.Barrier(8)

    def get():
        barrier.wait(5)
        results.append(registry.get("pods", api.list_fn, NS, SELECTOR, JOB))

    threads = [threading.Thread(target=get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    other_selector = registry.get("pods", api.list_fn, NS, "kubetask.io/batch-run=b")
    other_kind = registry.get("jobs", api.list_fn, NS, SELECTOR)
    other_ns = registry.get("pods", api.list_fn, "team-b", SELECTOR, JOB)
    try:
        assert len(results) == 8 and len({id(r) for r in results}) == 1
        assert results[0].wait_synced(5)
        distinct = {id(results[0]), id(other_selector), id(other_kind), id(other_ns)}
        assert len(distinct) == 4
        assert registry.get("pods", api.list_fn, NS, SELECTOR, JOB) is results[0]
        for inf in (other_selector, other_kind, other_ns):
            assert inf.wait_synced(5)
        listed = [(ns, kw["label_selector"]) for ns, kw in api.list_calls]
        assert sorted(listed) == sorted([(NS, SELECTOR), (NS, "kubetask.io/batch-run=b"), (NS, SELECTOR), ("team-b", SELECTOR)])
    finally:
        for inf in (results[0], other_selector, other_kind, other_ns):
            inf.stop()
        for _ in range(4):
            api.events.put({"type": "BOOKMARK", "object": obj("wake")})
