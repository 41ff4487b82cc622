"""The bridge's pooling decisions (crd_bridge.pools) against a fake Kubernetes API and a fake Dagster.
The same behaviours on the real stack: tests/integration/test_pooled_tasks.py."""

from __future__ import annotations

from typing import Any

from crd_bridge import pools
from crd_bridge.pools import PoolPolicy
from kubetask import objects, vocabulary
from kubetask.domain import runs as contract
from tests.unit.bridge.bridge_fakes import NS
from tests.unit.bridge.test_bridge_tasks import World, run_tags


class PoolWorld(World):
    """A World whose bridge pools from ``min_waiting`` waiting Tasks, without a gathering window."""

    def __init__(self, min_waiting: int = 3, max_tasks: int = 10) -> None:
        super().__init__(pooling=PoolPolicy(max_tasks=max_tasks, window=0.0, min_waiting=min_waiting))
        self.r.pools.sleep = self.wait

    def wait(self, seconds: float) -> None:
        """The bridge's sleep: this world's clock moves on."""
        self.clock.t += seconds

    def tasks(self, *names: str) -> list[dict[str, Any]]:
        return [self.task(n) for n in names]

    def label(self, name: str) -> str | None:
        return (self.kube.obj("tasks", name)["metadata"].get("labels") or {}).get(vocabulary.LABEL_POOL)

    def pool_submissions(self) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
        return [s for s in self.dagster.submitted if s[0] == contract.POOL_JOB]


def test_a_burst_is_claimed_launched_as_one_pool_and_recorded_on_each_task():
    w = PoolWorld()
    made = w.tasks("a", "b", "c")
    assert w.reconcile("a") is None
    (job, config, tags), = w.dagster.submitted
    pool = tags[vocabulary.TAG_POOL]
    assert job == contract.POOL_JOB and tags[vocabulary.TAG_KIND] == vocabulary.KIND_TASK_POOL
    refs = config["ops"]["expand_pool"]["config"]
    assert refs["namespace"] == NS and refs["pool"] == pool
    assert [r["uid"] for r in refs["tasks"]] == [t["metadata"]["uid"] for t in made]
    run_id = w.dagster.order[0]
    for t in made:
        name = t["metadata"]["name"]
        assert w.label(name) == pool
        st = w.status(name)
        assert st["phase"] == "Pending" and st["dagsterRunId"] == run_id
        assert st["dagsterRunUrl"] == contract.step_url(
            f"http://dagster.test/runs/{run_id}", contract.pool_step_key(name, t["metadata"]["uid"]))
        assert vocabulary.RUN_SUBMITTED in w.kube.reasons(name)
    for name in ("b", "c"):  # their own turns find them recorded
        w.sync(name)
        w.reconcile(name)
    assert len(w.dagster.submitted) == 1


def test_fewer_waiting_tasks_than_the_threshold_get_a_run_each():
    w = PoolWorld(min_waiting=3)
    w.tasks("a", "b")
    w.reconcile("a")
    w.reconcile("b")
    assert [s[0] for s in w.dagster.submitted] == [contract.TASK_JOB, contract.TASK_JOB]
    assert w.label("a") is None


def test_a_full_pool_leaves_the_rest_to_the_next_one():
    w = PoolWorld(max_tasks=2)
    w.tasks("a", "b", "c", "d", "e")
    w.reconcile("a")
    (_, config, _), = w.pool_submissions()
    assert [r["name"] for r in config["ops"]["expand_pool"]["config"]["tasks"]] == ["a", "b"]
    assert ((NS, "c"), 0.0) in w.enqueued
    w.reconcile("c")
    assert [[r["name"] for r in s[1]["ops"]["expand_pool"]["config"]["tasks"]] for s in w.pool_submissions()] == [
        ["a", "b"], ["c", "d"]]


def test_a_task_with_a_run_of_its_own_is_not_pooled_and_gets_that_run_recorded():
    """A bridge that died after submitting a Task alone, before writing its status."""
    w = PoolWorld()
    a, _, _ = w.tasks("a", "b", "c")
    own = w.dagster.add_run("STARTED", run_tags(a))
    w.reconcile("b")
    (_, config, _), = w.pool_submissions()
    assert [r["name"] for r in config["ops"]["expand_pool"]["config"]["tasks"]] == ["b", "c"]
    assert w.status("a")["dagsterRunId"] == own and w.label("a") is None


def test_a_claim_whose_run_was_launched_gets_that_run_recorded():
    w = PoolWorld()
    w.task("a")
    w.kube.patch_metadata("tasks", NS, "a", None, {"labels": {vocabulary.LABEL_POOL: "p1"}})
    run_id = w.dagster.add_run("STARTED", contract.pool_tags(NS, "p1"))
    w.sync("a")
    w.reconcile("a")
    assert w.dagster.submitted == []
    assert w.status("a")["dagsterRunId"] == run_id and w.label("a") == "p1"


def test_a_claim_whose_pool_never_ran_is_dropped_and_the_task_submitted_anew():
    w = PoolWorld(min_waiting=5)
    w.task("a")
    w.kube.patch_metadata("tasks", NS, "a", None, {"labels": {vocabulary.LABEL_POOL: "p1"}})
    w.sync("a")
    w.reconcile("a")
    assert w.label("a") is None and "dagsterRunId" not in w.status("a")
    w.sync("a")
    w.reconcile("a")
    assert [s[0] for s in w.dagster.submitted] == [contract.TASK_JOB]


def test_stopping_or_deleting_a_pooled_task_never_terminates_the_shared_run():
    w = PoolWorld()
    w.tasks("a", "b", "c")
    w.reconcile("a")
    run_id = w.status("a")["dagsterRunId"]
    w.dagster.finish(run_id, "STARTED")
    w.kube.patch_metadata("tasks", NS, "a", None, {"annotations": {vocabulary.STOP: "true"}})
    w.sync("a")
    w.reconcile("a")
    assert w.dagster.terminated == []
    assert vocabulary.STOP_REQUESTED in w.kube.reasons("a")
    gone = w.kube.obj("tasks", "b")
    w.kube.delete("tasks", NS, "b")
    w.r.observe("DELETED", gone)
    w.reconcile("b")
    assert w.dagster.terminated == []
    assert vocabulary.RUN_NOT_OWNED not in w.kube.reasons("b")


def test_dagster_away_while_pooling_is_said_on_every_gathered_task():
    w = PoolWorld()
    w.tasks("a", "b", "c")
    w.dagster.unavailable = True
    w.enqueued.clear()
    delay = w.reconcile("a")
    assert delay is not None and delay > 0
    for name in ("a", "b", "c"):
        assert w.condition(name)["reason"] == vocabulary.DAGSTER_UNAVAILABLE
        assert w.label(name) is None
    assert ((NS, "b"), 0.0) not in w.enqueued  # the periodic pass retries, with its backoff
    w.dagster.unavailable = False
    for name in ("a", "b", "c"):
        w.sync(name)
    w.reconcile("a")
    assert len(w.pool_submissions()) == 1


def test_a_task_deleted_while_its_pool_launches_leaves_the_others_recorded():
    w = PoolWorld()
    w.tasks("a", "b", "c")
    real_launch = w.r.pools.launch

    def launch_then_delete(namespace, pool, tasks):
        run_id = real_launch(namespace, pool, tasks)
        w.kube.delete("tasks", NS, "b")  # between the launch and the status writes
        return run_id

    w.r.pools.launch = launch_then_delete
    assert w.reconcile("a") is None
    run_id = w.dagster.order[0]
    assert w.status("a")["dagsterRunId"] == run_id and w.status("c")["dagsterRunId"] == run_id
    assert w.store.get((NS, "a")) is not None  # the Task reconciled stays cached


def gathering_world(max_gather: float, arrivals: list[str]) -> PoolWorld:
    """A PoolWorld whose gathering window is 0.1 s of its clock, one Task of ``arrivals`` applied per window."""
    w = PoolWorld(max_tasks=10)
    w.r.pools.policy = PoolPolicy(max_tasks=10, window=0.1, max_gather=max_gather, min_waiting=3)
    pending = list(arrivals)

    def sleep(seconds: float) -> None:
        w.clock.t += seconds
        if pending:
            w.task(pending.pop(0))

    w.r.pools.sleep = sleep
    return w


def pooled_names(w: PoolWorld) -> list[list[str]]:
    return [[r["name"] for r in s[1]["ops"]["expand_pool"]["config"]["tasks"]] for s in w.pool_submissions()]


def test_a_pool_gathers_while_its_burst_keeps_coming():
    w = gathering_world(max_gather=1.0, arrivals=["d", "e", "f"])
    w.tasks("a", "b", "c")
    w.reconcile("a")
    assert pooled_names(w) == [["a", "b", "c", "d", "e", "f"]]  # launched one window after "f"


def test_a_pool_stops_gathering_after_max_gather():
    w = gathering_world(max_gather=0.25, arrivals=[f"late-{i}" for i in range(20)])
    w.tasks("a", "b", "c")
    w.reconcile("a")
    assert pooled_names(w) == [["a", "b", "c", "late-0", "late-1", "late-2"]]


def test_tasks_just_after_a_pool_make_the_next_pool_then_run_alone_once_the_burst_is_over():
    w = PoolWorld(min_waiting=3)
    w.tasks("a", "b", "c")
    w.reconcile("a")
    w.tasks("d", "e")  # fewer than min_waiting, but the burst goes on
    w.reconcile("d")
    assert pooled_names(w) == [["a", "b", "c"], ["d", "e"]]
    w.clock.t += w.r.pools.policy.linger
    w.tasks("f", "g")
    w.reconcile("f")
    w.reconcile("g")
    assert [s[0] for s in w.dagster.submitted[2:]] == [contract.TASK_JOB, contract.TASK_JOB]


def test_a_burst_that_goes_on_slowly_makes_pools_of_min_waiting_tasks_not_a_run_each():
    w = PoolWorld(min_waiting=3)
    w.tasks("a", "b", "c")
    w.reconcile("a")
    later = ["d", "e", "f"]

    def trickle(seconds: float) -> None:  # one Task a second, each decided as it comes
        before = int(w.clock.t)
        w.clock.t += seconds
        if later and int(w.clock.t) > before:
            w.task(later.pop(0))

    w.r.pools.sleep = trickle
    w.clock.t += 2 * w.r.pools.policy.max_gather  # the burst slowed down: one Task at a time
    w.task("x")
    w.reconcile("x")
    assert pooled_names(w) == [["a", "b", "c"], ["x", "d", "e"]]
    assert later == ["f"]  # launched as soon as three waited, before "f" came


def test_tasks_that_trickle_in_make_a_pool_once_enough_arrived_within_max_gather():
    """A burst applied while the API server is busy arrives a Task at a time, each decided at once: the
    Tasks that arrived within ``max_gather`` seconds count, not only those waiting at that instant."""
    w = gathering_world(max_gather=1.0, arrivals=["d", "e"])
    for name in ("a", "b"):
        w.task(name)
        w.reconcile(name)
        w.clock.t += 0.2
    assert [s[0] for s in w.dagster.submitted] == [contract.TASK_JOB, contract.TASK_JOB]
    w.task("c")  # the third arrival within a second: a burst, although only "c" waits
    w.reconcile("c")
    assert pooled_names(w) == [["c", "d", "e"]]


def test_a_pool_looks_for_runs_of_its_own_only_among_runs_created_since_its_oldest_task():
    w = PoolWorld()
    w.dagster.add_run("SUCCESS", {vocabulary.TAG_KIND: vocabulary.KIND_TASK, vocabulary.TAG_NAMESPACE: NS})
    asked: list[float | None] = []
    find_runs = w.dagster.find_runs

    def recording(tags, **kw):
        asked.append(kw.get("created_after"))
        return find_runs(tags, **kw)

    w.dagster.find_runs = recording
    made = w.tasks("a", "b", "c")
    w.reconcile("a")
    oldest = min(objects.created_at(t) for t in made)
    assert asked == [oldest - pools.CLOCK_SKEW_SECONDS]
    assert pooled_names(w) == [["a", "b", "c"]]
