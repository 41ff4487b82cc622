"""Leader election on a Lease (crd_bridge.leader) against an in-memory Lease API with the API server's
optimistic concurrency: every write names the resourceVersion it read, a stale one is refused (409)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from crd_bridge import leader
from crd_bridge.config import parse_config
from crd_bridge.leader import KubernetesLeaseApi, LeaderElector, LeaseConflict, LeaseRecord

NS, NAME = "kubetask-system", "kubetask-bridge"
T0 = datetime(2030, 1, 1, tzinfo=UTC)


class FakeLeaseApi:
    def __init__(self):
        self.lease: LeaseRecord | None = None
        self.version = 0
        self.fail: Exception | None = None
        self.writes = 0
        self.lock = threading.Lock()

    def _store(self, record: LeaseRecord) -> LeaseRecord:
        self.version += 1
        self.writes += 1
        self.lease = replace(record, resource_version=str(self.version))
        return self.lease

    def get(self, namespace, name):
        assert (namespace, name) == (NS, NAME)
        if self.fail:
            raise self.fail
        return self.lease

    def create(self, namespace, name, record):
        with self.lock:
            if self.lease is not None:
                raise LeaseConflict("exists")
            return self._store(record)

    def replace(self, namespace, name, record):
        with self.lock:
            if self.fail:
                raise self.fail
            if self.lease is None or record.resource_version != self.lease.resource_version:
                raise LeaseConflict("stale")
            return self._store(record)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def elector(api, identity, clock=None, **kw) -> LeaderElector:
    clock = clock or Clock()
    wall = kw.pop("wall", None)
    return LeaderElector(
        api, NS, NAME, identity, monotonic=clock, now=wall or (lambda: T0 + timedelta(seconds=clock())), **kw
    )


def test_first_candidate_creates_the_lease_and_the_second_waits():
    api, clock = FakeLeaseApi(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert a.try_acquire_or_renew() and a.is_leader
    assert api.lease.holder == "a" and api.lease.lease_duration_seconds == 15 and api.lease.transitions == 0
    assert not b.try_acquire_or_renew() and not b.is_leader
    assert b.observed_holder == "a"
    clock.t += 14  # the record has not changed for 14 s: still valid
    assert not b.try_acquire_or_renew()
    assert api.lease.holder == "a"


def test_renewal_keeps_acquire_time_and_transitions_and_moves_renew_time():
    api, clock = FakeLeaseApi(), Clock()
    a = elector(api, "a", clock)
    assert a.try_acquire_or_renew()
    first = api.lease
    clock.t += 5
    assert a.try_acquire_or_renew()
    assert api.lease.acquire_time == first.acquire_time and api.lease.transitions == 0
    assert api.lease.renew_time == first.renew_time + timedelta(seconds=5)


def test_a_standby_takes_over_only_after_the_record_stayed_unchanged_for_the_lease_duration():
    api, clock = FakeLeaseApi(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    for _ in range(5):  # a keeps renewing: each renewal restarts b's observation window
        clock.t += 10
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    clock.t += 15  # a died: nobody wrote for a full lease duration
    assert b.try_acquire_or_renew() and b.is_leader
    assert api.lease.holder == "b" and api.lease.transitions == 1
    assert not a.try_acquire_or_renew()  # a, come back, finds the Lease taken
    assert a.observed_holder == "b"


def test_expiry_is_judged_by_local_observation_not_by_the_leases_wall_clock_times():
    api, clock = FakeLeaseApi(), Clock()
    # A Lease written long ago by another machine whose clock may be anything.
    api._store(
        LeaseRecord(
            holder="x",
            lease_duration_seconds=15,
            acquire_time=T0 - timedelta(days=1),
            renew_time=T0 - timedelta(days=1),
        )
    )
    b = elector(api, "b", clock)
    assert not b.try_acquire_or_renew()  # first sight: valid for a lease duration from now
    clock.t += 15
    assert b.try_acquire_or_renew()


def test_two_candidates_racing_for_a_free_lease_cannot_both_win():
    api = FakeLeaseApi()
    api._store(LeaseRecord(holder=None, lease_duration_seconds=1, transitions=3))
    a, b = elector(api, "a"), elector(api, "b")
    seen = api.get(NS, NAME)

    original_get = api.get
    api.get = lambda ns, name: seen  # both read the same version before either writes
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()  # its PUT names the old resourceVersion: 409
    api.get = original_get
    assert api.lease.holder == "a" and api.lease.transitions == 4


def test_two_candidates_creating_the_lease_at_once():
    api = FakeLeaseApi()
    a, b = elector(api, "a"), elector(api, "b")
    api.get = lambda ns, name: None  # neither sees the other's create
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert api.lease.holder == "a"


def test_release_lets_a_standby_take_over_at_once():
    api, clock = FakeLeaseApi(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert a.release() and not a.is_leader
    assert api.lease.holder is None and api.lease.lease_duration_seconds == 1
    assert b.try_acquire_or_renew()  # no waiting for expiry
    assert api.lease.holder == "b"
    assert not a.release()  # not the holder any more: nothing to release


def test_release_never_clears_someone_elses_lease():
    api, clock = FakeLeaseApi(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    clock.t += 16
    assert b.try_acquire_or_renew()  # a's Lease expired and b took it while a was not looking
    assert not a.release()
    assert api.lease.holder == "b"


def test_a_restarted_process_with_the_same_identity_resumes_its_lease_at_once():
    api, clock = FakeLeaseApi(), Clock()
    elector(api, "bridge-0", clock).try_acquire_or_renew()
    again = elector(api, "bridge-0", clock)  # the container restarted in the same pod
    assert again.try_acquire_or_renew()
    assert api.lease.transitions == 0


def test_timings_must_let_the_leader_stop_before_anyone_may_take_over():
    with pytest.raises(ValueError):
        elector(FakeLeaseApi(), "a", renew_deadline=20)


def wait_until(condition, timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def _fast(api, identity):
    return LeaderElector(
        api, NS, NAME, identity, lease_duration=0.6, renew_deadline=0.3, renew_interval=0.05, retry_period=0.05
    )


def test_the_leader_notices_a_takeover_and_reports_the_loss():
    api = FakeLeaseApi()
    a = _fast(api, "a")
    assert a.try_acquire_or_renew()
    lost: list[str] = []
    done = threading.Event()
    a.start_renewing(lambda reason: (lost.append(reason), done.set()))
    assert wait_until(lambda: api.writes >= 3)  # renewing
    assert not lost
    with api.lock:  # someone else takes the Lease (e.g. after a long pause of this process)
        api._store(LeaseRecord(holder="b", lease_duration_seconds=15, transitions=1))
    assert done.wait(2)
    assert "held by b" in lost[0] and not a.is_leader
    a.stop()


def test_the_leader_gives_up_when_it_cannot_renew_before_the_deadline():
    """Judged on the elector's own clock: each failed renewal takes 0.1 s of it."""
    api, clock = FakeLeaseApi(), Clock()
    a = LeaderElector(
        api,
        NS,
        NAME,
        "a",
        lease_duration=0.6,
        renew_deadline=0.3,
        renew_interval=0.01,
        retry_period=0.01,
        monotonic=clock,
    )
    assert a.try_acquire_or_renew()
    acquired = clock.t
    failures: list[float] = []

    def unreachable(namespace, name):
        clock.t += 0.1
        failures.append(clock.t - acquired)
        raise ConnectionError("API server unreachable")

    api.get = unreachable  # type: ignore[method-assign]
    lost: list[str] = []
    a.renew_until_lost(lost.append)  # returns once leadership is lost
    assert len(lost) == 1 and "could not renew" in lost[0] and "unreachable" in lost[0]
    assert not a.is_leader
    assert failures[-1] == pytest.approx(0.3) and len(failures) == 3  # at the renew deadline, not before
    assert failures[-1] < a.lease_duration  # before anyone may take the Lease over


def test_acquire_waits_for_the_lease_and_stops_on_request():
    api = FakeLeaseApi()
    holder = _fast(api, "a")
    holder.try_acquire_or_renew()
    standby = _fast(api, "b")
    waits: list[str | None] = []
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    holder.start_renewing(lambda reason: None)
    assert standby.acquire(stop, on_wait=waits.append) is False  # a kept renewing: b never led
    assert waits == ["a"]
    holder.stop()  # a dies without releasing
    assert standby.acquire(threading.Event()) is True  # b takes over once the Lease expires
    assert api.lease.holder == "b"


def test_default_identity_and_namespace(tmp_path):
    assert leader.default_identity({"POD_NAME": "kubetask-bridge-7d9-abc"}) == "kubetask-bridge-7d9-abc"
    one, two = leader.default_identity({}), leader.default_identity({})
    assert one != two  # two processes on one host never share an identity
    ns_file = tmp_path / "namespace"
    ns_file.write_text("platform\n")
    assert leader.default_namespace(str(ns_file)) == "platform"
    assert leader.default_namespace(str(tmp_path / "absent")) == "kubetask-system"


def test_lease_body_uses_micro_time_and_carries_the_resource_version():
    now = datetime(2030, 1, 2, 3, 4, 5, 678900, tzinfo=UTC)
    body = KubernetesLeaseApi._body(
        NAME,
        LeaseRecord(
            holder="a",
            lease_duration_seconds=15,
            acquire_time=now,
            renew_time=now,
            transitions=2,
            resource_version="41",
        ),
    )
    assert body["metadata"] == {"name": NAME, "resourceVersion": "41"}
    assert body["spec"] == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": "2030-01-02T03:04:05.678900Z",
        "renewTime": "2030-01-02T03:04:05.678900Z",
        "leaseTransitions": 2,
    }
    released = KubernetesLeaseApi._body(NAME, LeaseRecord(holder=None, lease_duration_seconds=1, transitions=2))
    assert "holderIdentity" not in released["spec"]


def test_flags():
    assert parse_config([], env={}).leader_elect is False
    cfg = parse_config(["--leader-elect", "--leader-election-namespace", "ops"], env={})
    assert (cfg.leader_elect, cfg.leader_election_namespace, cfg.leader_election_lease) == (
        True,
        "ops",
        "kubetask-bridge",
    )
    env = {"KUBETASK_BRIDGE_LEADER_ELECT": "true", "KUBETASK_BRIDGE_LEADER_ELECTION_LEASE": "other"}
    assert parse_config([], env=env).leader_elect is True
    assert parse_config(["--no-leader-elect"], env=env).leader_elect is False
    assert parse_config([], env=env).leader_election_lease == "other"


def test_standby_is_live_and_ready():
    health = leader.StandbyHealth("kubetask-system/kubetask-bridge")
    assert health.live()[0] and health.ready()[0]
    assert "standby" in health.ready()[1]
