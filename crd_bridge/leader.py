"""Leader election on a ``coordination.k8s.io/v1`` Lease, so that two bridge replicas are safe.

Only the leader watches and reconciles; a standby serves /healthz, /readyz (200: a standby is a healthy,
ready replica, so rolling updates never wait on it) and /metrics, and polls the Lease. The semantics are
client-go's ``leaderelection``:

- a Lease is free when it has no holder, or when its record (holder, renewTime, transitions...) has not
  changed for ``lease_duration`` seconds *as observed by this process's monotonic clock*: no comparison
  of wall clocks between machines;
- every write is a PUT carrying the ``resourceVersion`` that was read, so two candidates racing for a
  free Lease cannot both win: the API server refuses the second write with 409;
- the leader renews every ``renew_interval`` seconds and gives up (the process exits, Kubernetes
  restarts it as a standby) when it could not renew for ``renew_deadline`` seconds, which is shorter
  than ``lease_duration``: it stops acting before anyone else may take over;
- on shutdown the leader releases the Lease (empty holder), so a standby takes over within
  ``retry_period`` instead of waiting for the Lease to expire.

``python -m crd_bridge --leader-elect`` blocks in :func:`wait_for_leadership` before the bridge starts.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger("crd_bridge.leader")

DEFAULT_LEASE_NAME = "kubetask-bridge"
DEFAULT_NAMESPACE = "kubetask-system"
SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
LEASE_DURATION = 15.0
RENEW_DEADLINE = 10.0
RENEW_INTERVAL = 5.0
RETRY_PERIOD = 2.0
EXIT_LEADERSHIP_LOST = 1


class LeaseConflict(Exception):
    """The Lease changed (or appeared) since it was read: 409 from the API server."""


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease that leader election reads and writes."""

    holder: str | None = None
    lease_duration_seconds: int | None = None
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0
    resource_version: str | None = None

    def fingerprint(self) -> tuple[Any, ...]:
        """What changes whenever anyone writes the Lease (resourceVersion aside)."""
        return (self.holder, self.lease_duration_seconds, self.acquire_time, self.renew_time, self.transitions)


class LeaseApi(Protocol):
    def get(self, namespace: str, name: str) -> LeaseRecord | None: ...

    def create(self, namespace: str, name: str, record: LeaseRecord) -> LeaseRecord:
        """Raises LeaseConflict when it already exists."""
        ...

    def replace(self, namespace: str, name: str, record: LeaseRecord) -> LeaseRecord:
        """PUT guarded by ``record.resource_version``; raises LeaseConflict on 409."""
        ...


def _micro_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubernetesLeaseApi:
    """``LeaseApi`` over the kubernetes client's CoordinationV1Api (get, create, update: nothing else)."""

    TIMEOUT = (5, 10)

    def __init__(self, api_client: Any):
        import kubernetes

        self._api = kubernetes.client.CoordinationV1Api(api_client)
        self._api_exception = kubernetes.client.exceptions.ApiException

    @staticmethod
    def _record(lease: Any) -> LeaseRecord:
        spec = lease.spec
        return LeaseRecord(
            holder=spec.holder_identity or None,
            lease_duration_seconds=spec.lease_duration_seconds,
            acquire_time=spec.acquire_time,
            renew_time=spec.renew_time,
            transitions=spec.lease_transitions or 0,
            resource_version=lease.metadata.resource_version,
        )

    @staticmethod
    def _body(name: str, record: LeaseRecord) -> dict[str, Any]:
        spec = {
            "holderIdentity": record.holder,
            "leaseDurationSeconds": record.lease_duration_seconds,
            "acquireTime": _micro_time(record.acquire_time),
            "renewTime": _micro_time(record.renew_time),
            "leaseTransitions": record.transitions,
        }
        metadata: dict[str, Any] = {"name": name}
        if record.resource_version:
            metadata["resourceVersion"] = record.resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {k: v for k, v in spec.items() if v is not None},
        }

    def get(self, namespace: str, name: str) -> LeaseRecord | None:
        try:
            return self._record(self._api.read_namespaced_lease(name, namespace, _request_timeout=self.TIMEOUT))
        except self._api_exception as e:
            if e.status == 404:
                return None
            raise

    def create(self, namespace: str, name: str, record: LeaseRecord) -> LeaseRecord:
        try:
            return self._record(
                self._api.create_namespaced_lease(namespace, self._body(name, record), _request_timeout=self.TIMEOUT)
            )
        except self._api_exception as e:
            if e.status == 409:
                raise LeaseConflict(f"Lease {namespace}/{name} already exists") from None
            raise

    def replace(self, namespace: str, name: str, record: LeaseRecord) -> LeaseRecord:
        try:
            return self._record(
                self._api.replace_namespaced_lease(
                    name, namespace, self._body(name, record), _request_timeout=self.TIMEOUT
                )
            )
        except self._api_exception as e:
            if e.status == 409:
                raise LeaseConflict(
                    f"Lease {namespace}/{name} changed since resourceVersion {record.resource_version}"
                ) from None
            raise


class LeaderElector:
    """One candidate for one Lease. ``try_acquire_or_renew`` is a single round; the loops are built on it."""

    def __init__(
        self,
        api: LeaseApi,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = LEASE_DURATION,
        renew_deadline: float = RENEW_DEADLINE,
        renew_interval: float = RENEW_INTERVAL,
        retry_period: float = RETRY_PERIOD,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        if not renew_interval < renew_deadline < lease_duration:
            raise ValueError("need renew_interval < renew_deadline < lease_duration")
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.renew_interval = renew_interval
        self.retry_period = retry_period
        self._monotonic = monotonic
        self._now = now
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._last_renewed: float | None = None  # monotonic time of our last successful write
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- one round ----------------------------------------------------------------------------

    @property
    def observed_holder(self) -> str | None:
        return self._observed.holder if self._observed else None

    @property
    def is_leader(self) -> bool:
        return self._last_renewed is not None and self.observed_holder == self.identity

    def _observe(self, record: LeaseRecord) -> None:
        if self._observed is None or record.fingerprint() != self._observed.fingerprint():
            self._observed_at = self._monotonic()
        self._observed = record

    def _held_by_other(self, record: LeaseRecord) -> bool:
        if not record.holder or record.holder == self.identity:
            return False
        duration = record.lease_duration_seconds or self.lease_duration
        return self._observed_at + duration > self._monotonic()

    def try_acquire_or_renew(self) -> bool:
        """Take the Lease if it is free or ours; True when this process holds it after the call."""
        now = self._now()
        record = self.api.get(self.namespace, self.name)
        mine = LeaseRecord(
            holder=self.identity,
            lease_duration_seconds=int(self.lease_duration),
            acquire_time=now,
            renew_time=now,
            transitions=0,
        )
        if record is None:
            try:
                created = self.api.create(self.namespace, self.name, mine)
            except LeaseConflict:
                return False
            self._observe(created)
            self._won()
            return True
        self._observe(record)
        if self._held_by_other(record):
            return False
        if record.holder == self.identity:  # renewal: keep acquireTime and the transition count
            mine = replace(mine, acquire_time=record.acquire_time or now, transitions=record.transitions)
        else:  # takeover of a free or expired Lease
            mine = replace(mine, transitions=record.transitions + 1)
        try:
            updated = self.api.replace(
                self.namespace, self.name, replace(mine, resource_version=record.resource_version)
            )
        except LeaseConflict:
            return False
        self._observe(updated)
        self._won()
        return True

    def _won(self) -> None:
        if self._last_renewed is None:
            log.info("became the leader: Lease %s/%s, identity %s", self.namespace, self.name, self.identity)
        self._last_renewed = self._monotonic()
        LEADER.set(1)

    def release(self) -> bool:
        """Give the Lease up if this process holds it (holder emptied), so a standby need not wait for expiry."""
        self.stop()
        if self._last_renewed is None:
            return False
        self._last_renewed = None
        LEADER.set(0)
        try:
            record = self.api.get(self.namespace, self.name)
            if record is None or record.holder != self.identity:
                return False
            now = self._now()
            self.api.replace(
                self.namespace,
                self.name,
                LeaseRecord(
                    holder=None,
                    lease_duration_seconds=1,
                    acquire_time=now,
                    renew_time=now,
                    transitions=record.transitions,
                    resource_version=record.resource_version,
                ),
            )
            log.info("released the Lease %s/%s", self.namespace, self.name)
            return True
        except Exception as e:  # the Lease then expires by itself
            log.warning("could not release the Lease %s/%s: %s", self.namespace, self.name, e)
            return False

    # --- loops --------------------------------------------------------------------------------

    def acquire(self, stop: threading.Event, on_wait: Callable[[str | None], None] | None = None) -> bool:
        """Block until this process leads (True) or ``stop`` is set (False)."""
        announced: str | None = ""
        while not stop.is_set():
            try:
                if self.try_acquire_or_renew():
                    return True
            except Exception as e:
                log.warning("Lease %s/%s: %s", self.namespace, self.name, e)
            holder = self.observed_holder
            if holder != announced:
                announced = holder
                log.info("standby: the Lease %s/%s is held by %s", self.namespace, self.name, holder)
                if on_wait:
                    on_wait(holder)
            stop.wait(self.retry_period)
        return False

    def renew_until_lost(self, on_lost: Callable[[str], None]) -> None:
        """Renew every ``renew_interval`` until ``stop()``; call ``on_lost(reason)`` once if leadership ends."""
        wait = self.renew_interval
        while not self._stop.wait(wait):
            try:
                ok = self.try_acquire_or_renew()
                error = None
            except Exception as e:
                ok, error = False, e
            if ok:
                wait = self.renew_interval
                continue
            if self._stop.is_set():
                return
            holder = self.observed_holder
            if error is None and holder and holder != self.identity:
                self._lost(on_lost, f"the Lease is now held by {holder}")
                return
            since = self._monotonic() - (self._last_renewed or 0.0)
            if since >= self.renew_deadline:
                self._lost(on_lost, f"could not renew the Lease for {since:.0f} s ({error or 'conflict'})")
                return
            log.warning("Lease %s/%s not renewed (%s); retrying", self.namespace, self.name, error or "conflict")
            wait = self.retry_period

    def _lost(self, on_lost: Callable[[str], None], reason: str) -> None:
        self._last_renewed = None
        LEADER.set(0)
        on_lost(reason)

    def start_renewing(self, on_lost: Callable[[str], None]) -> threading.Thread:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.renew_until_lost, args=(on_lost,), name="bridge-leader", daemon=True
        )
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=15)
        self._thread = None


# --- the bridge's use ----------------------------------------------------------------------------


def _leader_gauge() -> Any:
    from prometheus_client import Gauge

    from .metrics import REGISTRY

    return Gauge("kubetask_bridge_leader", "1 while this bridge process holds the leader Lease.", registry=REGISTRY)


LEADER = _leader_gauge()


def default_namespace(path: str = SERVICE_ACCOUNT_NAMESPACE_FILE) -> str:
    """The pod's namespace (service account mount), else ``kubetask-system``."""
    try:
        with open(path) as f:
            value = f.read().strip()
        return value or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


def default_identity(env: dict[str, str] | None = None) -> str:
    """``$POD_NAME`` (Downward API: a restarted container recognises its own Lease), else host, pid and a nonce."""
    env = dict(os.environ) if env is None else env
    return env.get("POD_NAME") or f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


class StandbyHealth:
    """Health of a standby: alive and ready (it is doing its job: waiting)."""

    def __init__(self, lease: str):
        self.detail = f"standby: waiting for the Lease {lease}"

    def live(self) -> tuple[bool, str]:
        return True, self.detail

    def ready(self) -> tuple[bool, str]:
        return True, self.detail


def exit_process(reason: str) -> None:
    """Leadership lost: stop at once (no graceful shutdown may act as leader); Kubernetes restarts us as a standby."""
    log.error("leadership lost (%s); exiting", reason)
    logging.shutdown()
    os._exit(EXIT_LEADERSHIP_LOST)


def wait_for_leadership(
    config: Any, configuration: Any, *, on_lost: Callable[[str], None] = exit_process
) -> LeaderElector | None:
    """Block until this process leads the bridge's Lease, serving standby health meanwhile.

    Returns the elector, already renewing in a thread (call ``release()`` after the bridge stopped), or
    None when SIGTERM/SIGINT arrived while waiting."""
    import kubernetes

    from . import metrics

    namespace = config.leader_election_namespace or default_namespace()
    name = config.leader_election_lease or DEFAULT_LEASE_NAME
    elector = LeaderElector(
        KubernetesLeaseApi(kubernetes.client.ApiClient(configuration)), namespace, name, default_identity()
    )
    LEADER.set(0)
    health = StandbyHealth(f"{namespace}/{name}")
    server = metrics.serve(config.health_host, config.health_port, health)
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    log.info("leader election: Lease %s/%s, identity %s", namespace, name, elector.identity)
    try:
        led = elector.acquire(
            stop,
            on_wait=lambda holder: setattr(
                health, "detail", f"standby: the Lease {namespace}/{name} is held by {holder or 'nobody'}"
            ),
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.shutdown()
        server.server_close()
    if not led:
        log.info("stopped while waiting for leadership")
        return None
    elector.start_renewing(on_lost)
    return elector
