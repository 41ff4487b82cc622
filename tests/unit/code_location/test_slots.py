"""``maxConcurrentTasks`` as a Dagster pool (``execution/slots.py``) against a real Dagster instance's
concurrency storage; the poll's sleep is a recorded fake that lets the test act between polls."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from dagster import DagsterExecutionInterruptedError
from dagster._core.test_utils import instance_for_test

from kubetask_dagster.execution import slots as slots_mod
from kubetask_dagster.execution.slots import CLAIM_POLL_SECONDS, WorkspaceSlots, pool_key

KEY = pool_key("team-a", "gpu")


@pytest.fixture(scope="module")
def instance():
    with instance_for_test() as inst:
        assert inst.event_log_storage.supports_global_concurrency_limits
        yield inst


@pytest.fixture
def key(request) -> str:
    """A pool of its own for each test (the instance is shared by the module's tests)."""
    return pool_key("team-a", request.node.name.replace("_", "-")[:60])


class Polls:
    """Stands in for ``time`` in slots.py: each sleep is recorded and runs the test's next action."""

    def __init__(self):
        self.sleeps: list[float] = []
        self.actions: list = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        assert len(self.sleeps) < 100, "the claim never succeeded"
        if self.actions:
            self.actions.pop(0)()


@pytest.fixture
def polls(monkeypatch) -> Polls:
    p = Polls()
    monkeypatch.setattr(slots_mod, "time", SimpleNamespace(sleep=p.sleep))
    return p


def slot(instance, key: str, step: str, limit: int = 2, run: str = "run-1") -> WorkspaceSlots:
    return WorkspaceSlots(instance, key, limit, run, step)


def claimed(instance, key: str) -> set[tuple[str, str]]:
    return {(c.run_id, c.step_key) for c in instance.event_log_storage.get_concurrency_info(key).claimed_slots}


def never_interrupted() -> bool:
    return False


def test_pool_key_format():
    assert KEY == "kubetask/team-a/gpu"
    assert pool_key("ns", "default") == "kubetask/ns/default"


def test_the_first_claim_sets_the_pools_limit(instance, key, polls):
    slot(instance, key, "a", limit=3).acquire(on_wait=pytest.fail, interrupted=never_interrupted)
    info = instance.event_log_storage.get_concurrency_info(key)
    assert info.slot_count == 3
    assert claimed(instance, key) == {("run-1", "a")}


def test_a_changed_limit_is_written_on_the_next_claim(instance, key, polls):
    slot(instance, key, "a", limit=1).acquire(on_wait=pytest.fail, interrupted=never_interrupted)
    slot(instance, key, "b", limit=2).acquire(on_wait=pytest.fail, interrupted=never_interrupted)  # the new limit admits it
    assert instance.event_log_storage.get_concurrency_info(key).slot_count == 2
    assert claimed(instance, key) == {("run-1", "a"), ("run-1", "b")}


def test_claims_up_to_the_limit_do_not_wait(instance, key, polls):
    for step in ("a", "b"):
        slot(instance, key, step).acquire(on_wait=pytest.fail, interrupted=never_interrupted)
    assert claimed(instance, key) == {("run-1", "a"), ("run-1", "b")}
    assert polls.sleeps == []


def test_a_claim_over_the_limit_waits_until_a_release(instance, key, polls):
    a, b, c = (slot(instance, key, s, run=r) for s, r in (("a", "run-1"), ("b", "run-2"), ("c", "run-3")))
    a.acquire(on_wait=pytest.fail, interrupted=never_interrupted)
    b.acquire(on_wait=pytest.fail, interrupted=never_interrupted)
    waits: list[str] = []
    polls.actions = [lambda: None, lambda: None, a.release]  # the slot frees up during the third poll
    c.acquire(on_wait=lambda: waits.append("waiting"), interrupted=never_interrupted)
    assert waits == ["waiting"]  # on_wait runs once, not on each poll
    assert polls.sleeps == [CLAIM_POLL_SECONDS] * 3
    assert claimed(instance, key) == {("run-2", "b"), ("run-3", "c")}


def test_release_frees_the_slot(instance, key, polls):
    a = slot(instance, key, "a", limit=1)
    a.acquire(on_wait=pytest.fail, interrupted=never_interrupted)
    a.release()
    assert claimed(instance, key) == set()
    slot(instance, key, "b", limit=1).acquire(on_wait=pytest.fail, interrupted=never_interrupted)
    assert claimed(instance, key) == {("run-1", "b")}


def test_the_same_step_in_another_run_is_another_claim(instance, key, polls):
    slot(instance, key, "run_agent", limit=1, run="run-1").acquire(on_wait=pytest.fail, interrupted=never_interrupted)
    other = slot(instance, key, "run_agent", limit=1, run="run-2")
    with pytest.raises(DagsterExecutionInterruptedError):
        other.acquire(on_wait=lambda: None, interrupted=lambda: True)
    assert claimed(instance, key) == {("run-1", "run_agent")}


def test_an_interrupted_wait_raises_and_leaves_no_place_in_the_queue(instance, key, polls):
    holder = slot(instance, key, "a", limit=1)
    holder.acquire(on_wait=pytest.fail, interrupted=never_interrupted)
    leaving = slot(instance, key, "b", limit=1, run="run-2")
    checks = iter([False, False, True])
    with pytest.raises(DagsterExecutionInterruptedError):
        leaving.acquire(on_wait=lambda: None, interrupted=lambda: next(checks))
    assert len(polls.sleeps) == 2
    pending = {(p.run_id, p.step_key) for p in instance.event_log_storage.get_concurrency_info(key).pending_steps}
    assert ("run-2", "b") not in pending
    # The step that left does not hold the slot up for the next one in the queue.
    holder.release()
    slot(instance, key, "c", limit=1, run="run-3").acquire(on_wait=pytest.fail, interrupted=never_interrupted)
    assert claimed(instance, key) == {("run-3", "c")}
