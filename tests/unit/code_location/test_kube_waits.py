"""The run worker's wait for an attempt's pod (``Kube.wait_for_pod_end``) and ``PodCreationFailed``,
over fake informers and a fake clock: no cluster, no real waiting."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from kubernetes.client import (
    CoreV1EventList,
    V1ContainerState,
    V1ContainerStateRunning,
    V1ContainerStateTerminated,
    V1ContainerStatus,
    V1Job,
    V1JobCondition,
    V1JobStatus,
    V1ObjectMeta,
    V1Pod,
    V1PodStatus,
)
from kubernetes.client.rest import ApiException

from kubetask import vocabulary
from kubetask_dagster import kube as kube_mod
from kubetask_dagster.kube import JOB_NAME_LABEL, Kube, WaitInterrupted

NS = "team-a"
JOB = "t1-job-1"
SELECTOR = "kubetask.io/task=t1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class FakeInformer:
    """What ``wait_for_pod_end`` reads of an informer; ``wait_for_change`` advances the fake clock and
    runs ``on_wait`` (the test's script of what happens in the cluster meanwhile). The wait blocks on
    the pods' informer only, so scripts go on that one."""

    def __init__(self, clock: Clock, objects: dict | None = None, index: dict | None = None, on_wait=None):
        self.clock = clock
        self.objects = objects or {}
        self.index = index or {}
        self.on_wait = on_wait
        self.version = 0
        self.waits: list[tuple[int, float]] = []

    def by_index(self, value):
        return list(self.index.get(value, []))

    def get(self, name):
        return self.objects.get(name)

    def wait_for_change(self, seen, timeout):
        self.waits.append((seen, timeout))
        assert len(self.waits) < 10_000, "the wait never ended"
        self.clock.now += timeout
        if self.on_wait:
            self.on_wait(self.clock.now)
        return self.version


class FakeCore:
    def __init__(self, events=()):
        self.events = list(events)
        self.event_calls: list[tuple[str, str]] = []

    def list_namespaced_event(self, namespace, field_selector=None, **_):
        self.event_calls.append((namespace, field_selector))
        return CoreV1EventList(items=list(self.events))

    def list_namespaced_pod(self, *a, **k):  # only passed on to the (faked) informer
        raise AssertionError("read through the informer")


class FakeBatch:
    def __init__(self, jobs=None):
        self.jobs = jobs if jobs is not None else {}
        self.reads: list[str] = []

    def read_namespaced_job(self, name, namespace):
        self.reads.append(name)
        if name not in self.jobs:
            raise ApiException(status=404)
        return self.jobs[name]

    def list_namespaced_job(self, *a, **k):
        raise AssertionError("read through the informer")


def event(reason: str, message: str):
    return SimpleNamespace(reason=reason, message=message)


def job(*conditions: tuple[str, str]) -> V1Job:
    return V1Job(
        metadata=V1ObjectMeta(name=JOB),
        status=V1JobStatus(conditions=[V1JobCondition(type=t, status="True", reason=r) for t, r in conditions]),
    )


def pod(phase: str, agent_state: V1ContainerState | None = None, name: str = "t1-job-1-abcde") -> V1Pod:
    statuses = [V1ContainerStatus(name="agent", state=agent_state, image="i", image_id="", ready=False, restart_count=0)]
    return V1Pod(
        metadata=V1ObjectMeta(name=name, labels={JOB_NAME_LABEL: JOB}),
        status=V1PodStatus(phase=phase, container_statuses=statuses if agent_state else None),
    )


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(kube_mod, "time", SimpleNamespace(monotonic=c.monotonic))
    return c


def make_kube(clock: Clock, *, pods: FakeInformer | None = None, jobs: FakeInformer | None = None, events=(),
              api_jobs: dict | None = None) -> Kube:
    """A ``Kube`` without a cluster: fake core and batch APIs, fake informers."""
    k = Kube.__new__(Kube)
    k.core = FakeCore(events)
    k.batch = FakeBatch(api_jobs)
    k.informer_calls = []
    informers = {"pods": pods or FakeInformer(clock), "jobs": jobs or FakeInformer(clock)}

    def informer(kind, list_fn, namespace, label_selector, index_label=None):
        k.informer_calls.append((kind, namespace, label_selector, index_label))
        return informers[kind]

    k._informer = informer
    return k


def wait(k: Kube, **kwargs):
    kwargs.setdefault("deadline_seconds", None)
    return k.wait_for_pod_end(NS, JOB, label_selector=SELECTOR, **kwargs)


# --- PodCreationFailed from the Job's Events ---------------------------------------------------------


def test_pod_creation_failure_reads_the_jobs_failed_create_events(clock):
    k = make_kube(clock, events=[
        event("SuccessfulCreate", "ignored"),
        event("FailedCreate", 'pods "t1-job-1-" is forbidden: exceeded quota'),
        event("FailedCreate", 'pods "t1-job-1-" is forbidden: serviceaccount "agent" not found'),
    ])
    outcome = k._pod_creation_failure(NS, JOB)
    assert outcome is not None
    assert (outcome.succeeded, outcome.reason) == (False, vocabulary.POD_CREATION_FAILED)
    assert outcome.message == 'pods "t1-job-1-" is forbidden: serviceaccount "agent" not found'  # the latest
    assert k.core.event_calls == [(NS, f"involvedObject.name={JOB}")]


def test_no_failed_create_event_is_no_outcome(clock):
    k = make_kube(clock, events=[event("SuccessfulCreate", "Created pod"), event("Scheduled", "x")])
    assert k._pod_creation_failure(NS, JOB) is None


def test_wait_returns_pod_creation_failed_after_the_grace_period(clock):
    k = make_kube(clock, jobs=FakeInformer(clock, objects={JOB: job()}),
                  events=[event("FailedCreate", "exceeded quota")])
    started = clock.now
    outcome = wait(k, no_pod_grace=60.0)
    assert outcome.reason == vocabulary.POD_CREATION_FAILED and outcome.message == "exceeded quota"
    assert 60.0 < clock.now - started <= 61.0  # the first look after the grace
    assert len(k.core.event_calls) == 1
    assert k.informer_calls == [("pods", NS, SELECTOR, JOB_NAME_LABEL), ("jobs", NS, SELECTOR, None)]


def test_events_are_read_again_a_minute_later_not_on_every_wake_up(clock):
    k = make_kube(clock, jobs=FakeInformer(clock, objects={JOB: job()}))
    started = clock.now

    def on_wait(now):
        if now - started > 100:  # the quota is exhausted only later
            k.core.events = [event("FailedCreate", "exceeded quota")]

    k._informer("pods", None, NS, SELECTOR).on_wait = on_wait
    outcome = wait(k, no_pod_grace=60.0)
    assert outcome.reason == vocabulary.POD_CREATION_FAILED
    assert len(k.core.event_calls) == 2  # at ~60 s and at ~120 s, not at each of the ~240 wake-ups
    assert 120.0 < clock.now - started <= 121.0


def test_a_pod_that_exists_is_never_a_pod_creation_failure(clock):
    running = pod("Running", V1ContainerState(running=V1ContainerStateRunning()))
    pods = FakeInformer(clock, index={JOB: [running]})
    started = clock.now

    def on_wait(now):
        if now - started > 90:
            pods.index[JOB] = [pod("Succeeded", V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=0)))]

    pods.on_wait = on_wait
    k = make_kube(clock, pods=pods, jobs=FakeInformer(clock, objects={JOB: job()}),
                  events=[event("FailedCreate", "an old failure")])
    seen_running: list[str] = []
    outcome = wait(k, no_pod_grace=60.0, on_running=seen_running.append)
    assert outcome.succeeded and outcome.reason == vocabulary.COMPLETED and outcome.pod_name == "t1-job-1-abcde"
    assert k.core.event_calls == []
    assert seen_running == ["t1-job-1-abcde"]  # once, not at every wake-up


# --- the other ways a wait ends --------------------------------------------------------------------


def test_a_failing_pod_ends_the_wait_at_once(clock):
    failed = pod("Failed", V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=2, reason="Error")))
    k = make_kube(clock, pods=FakeInformer(clock, index={JOB: [failed]}))
    outcome = wait(k)
    assert (outcome.reason, outcome.exit_code) == (vocabulary.AGENT_FAILED, 2)
    assert k._informer("pods", None, NS, SELECTOR).waits == []


def test_a_complete_job_ends_the_wait(clock):
    k = make_kube(clock, jobs=FakeInformer(clock, objects={JOB: job(("Complete", ""))}))
    assert wait(k).reason == vocabulary.COMPLETED


def test_the_deadline_is_a_timeout(clock):
    k = make_kube(clock, jobs=FakeInformer(clock, objects={JOB: job()}))
    started = clock.now
    outcome = wait(k, deadline_seconds=30, no_pod_grace=1e9)
    assert (outcome.succeeded, outcome.reason) == (False, vocabulary.TIMEOUT)
    assert "30 s" in outcome.message and 30 < clock.now - started <= 31


def test_an_interrupt_raises(clock):
    k = make_kube(clock, jobs=FakeInformer(clock, objects={JOB: job()}))
    started = clock.now
    with pytest.raises(WaitInterrupted):
        wait(k, interrupted=lambda: clock.now - started > 2)
    assert clock.now - started <= 3


def test_a_job_gone_from_the_cache_is_deleted_only_when_the_api_server_confirms(clock):
    jobs = FakeInformer(clock, objects={JOB: job()})
    api_jobs = {JOB: job()}
    started = clock.now

    def on_wait(now):
        if now - started > 3:
            jobs.objects.clear()  # the cache dropped it (a watch relisting) ...
        if now - started > 20:
            api_jobs.clear()  # ... and later it is really gone

    k = make_kube(clock, pods=FakeInformer(clock, on_wait=on_wait), jobs=jobs, api_jobs=api_jobs)
    outcome = wait(k, no_pod_grace=1e9)
    assert outcome.reason == vocabulary.JOB_DELETED
    assert 20 < clock.now - started <= 26  # the direct read happens at most every 5 s
    assert k.batch.reads and all(name == JOB for name in k.batch.reads)
    assert len(k.batch.reads) <= 5


def test_a_job_not_yet_in_the_cache_is_not_deleted(clock):
    # Just created: absent from the cache, and the API server has not got it either; within the cache grace
    # the wait does not even ask, and a Job that never existed is not "deleted".
    k = make_kube(clock, api_jobs={})
    started = clock.now
    outcome = wait(k, deadline_seconds=40, no_pod_grace=1e9)
    assert outcome.reason == vocabulary.TIMEOUT
    assert k.batch.reads  # asked after the grace
    assert clock.now - started > 40


# --- Kueue: a suspended Job waits for admission, and an eviction is no outcome ----------------------


def suspended_job(suspend: bool) -> SimpleNamespace:
    return SimpleNamespace(metadata=V1ObjectMeta(name=JOB), spec=SimpleNamespace(suspend=suspend),
                           status=V1JobStatus(conditions=[]))


def succeeded(name: str = "t1-job-1-abcde") -> V1Pod:
    return pod("Succeeded", V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=0, reason="Completed")), name)


def test_a_suspended_job_waits_for_admission_and_its_deadline_counts_from_then(clock):
    jobs = FakeInformer(clock, objects={JOB: suspended_job(True)})
    pods = FakeInformer(clock)
    started = clock.now
    calls: list[str] = []

    def on_wait(now):
        if now - started > 50:  # admitted after 50 s, longer than the deadline
            jobs.objects[JOB] = suspended_job(False)
        if now - started > 55:
            pods.index[JOB] = [succeeded()]

    jobs.on_wait = pods.on_wait = on_wait
    k = make_kube(clock, pods=pods, jobs=jobs)
    outcome = wait(k, deadline_seconds=10, on_suspended=lambda evicted: calls.append(f"suspended {evicted}"),
                   on_admitted=lambda: calls.append("admitted"))
    assert outcome.succeeded, outcome
    assert calls == ["suspended False", "admitted"]


def test_an_eviction_is_no_outcome_and_the_readmitted_job_goes_on(clock):
    jobs = FakeInformer(clock, objects={JOB: suspended_job(False)})
    killed = pod("Failed", V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=137, reason="Error")))
    pods = FakeInformer(clock, index={JOB: [pod("Running", V1ContainerState(running=V1ContainerStateRunning()))]})
    started = clock.now
    calls: list[str] = []

    def on_wait(now):
        if 10 < now - started <= 30:  # Kueue suspends it; the Job controller kills the pod
            jobs.objects[JOB] = suspended_job(True)
            pods.index[JOB] = [killed]
        elif now - started > 30:  # admitted again: a new pod that succeeds
            jobs.objects[JOB] = suspended_job(False)
            pods.index[JOB] = [succeeded("t1-job-1-fghij")]

    jobs.on_wait = pods.on_wait = on_wait
    k = make_kube(clock, pods=pods, jobs=jobs, api_jobs={JOB: suspended_job(True)})
    outcome = wait(k, deadline_seconds=600, on_suspended=lambda evicted: calls.append(f"suspended {evicted}"),
                   on_admitted=lambda: calls.append("admitted"), on_running=lambda p: calls.append(f"running {p}"))
    assert outcome.succeeded and outcome.pod_name == "t1-job-1-fghij", outcome
    assert calls == ["running t1-job-1-abcde", "suspended True", "admitted"]


def test_a_suspended_job_deleted_is_not_an_admission(clock):
    jobs = FakeInformer(clock, objects={JOB: suspended_job(True)})
    started = clock.now
    admitted: list[bool] = []

    def on_wait(now):
        if now - started > 5:
            jobs.objects.clear()

    jobs.on_wait = on_wait
    k = make_kube(clock, pods=FakeInformer(clock, on_wait=on_wait), jobs=jobs, api_jobs={})
    outcome = wait(k, no_pod_grace=1e9, on_admitted=lambda: admitted.append(True))
    assert outcome.reason == vocabulary.JOB_DELETED and admitted == []
