"""Fakes of the bridge's two edges, shared by its unit tests: ``FakeKube`` (``crd_bridge.kube.KubeApi``
over a dict, with the API server's optimistic concurrency) and ``FakeDagster`` (the ``DagsterClient``
calls the reconcilers make), plus a settable ``Clock`` and ``merge`` (RFC 7386)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from crd_bridge import batchruns, tasks
from crd_bridge.cache import ObjectStore, decided_fields
from crd_bridge.dagster.client import PARENT_RUN_ID_TAG, DagsterRejected, DagsterUnavailable, RunInfo, RunNotFound
from crd_bridge.kube import Conflict, Gone

NS = "team"
T0 = 1_800_000_000.0


def merge(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, Mapping) and isinstance(target.get(k), dict):
            merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)
    return target


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def task_store(clock: Callable[[], float]) -> ObjectStore:
    """The Task cache as the runtime builds it (both reconcilers' indexes, only the decided fields)."""
    return ObjectStore(
        {tasks.BY_WORKSPACE: tasks.workspace_index, batchruns.BY_BATCHRUN: batchruns.batchrun_index},
        clock=clock,
        trim=decided_fields,
    )


class FakeKube:
    """Objects by (plural, namespace, name); every write bumps the resourceVersion."""

    def __init__(self) -> None:
        self.objs: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.jobs: set[tuple[str, str]] = set()
        self.events: list[tuple[str, str, str, bool]] = []
        self.status_patches: list[tuple[str, dict[str, Any]]] = []
        self.meta_patches: list[tuple[str, dict[str, Any]]] = []
        self.deleted: list[tuple[str, str]] = []
        self.rv = 100
        self.before_patch: Callable[[str, str], None] | None = None
        """Called once (then cleared) before the next patch, with its namespace and name."""
        self.patch_error: Exception | None = None
        """Raised once (then cleared) by the next patch."""
        self.gets = 0
        self.enabled: set[str] | None = None
        """Namespaces where the run worker may work (None: all); ``may`` raises ``may_error`` when set."""
        self.may_error: Exception | None = None
        self.reviews: list[tuple[str, tuple[str, ...], str, str, str, str]] = []

    def _bump(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def add(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("namespace", NS)
        self._bump(obj)
        self.objs[(plural, obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        return copy.deepcopy(obj)

    def write_status(self, plural: str, name: str, status: Mapping[str, Any], ns: str = NS) -> dict[str, Any]:
        """A write by someone else (the run's ops): no precondition."""
        obj = self.objs[(plural, ns, name)]
        merge(obj.setdefault("status", {}), status)
        self._bump(obj)
        return copy.deepcopy(obj)

    def annotate(self, name: str, **values: str | None) -> dict[str, Any]:
        """annotate("br", kubetask_pause="true") sets kubetask.io/pause on a BatchRun; None removes it."""
        obj = self.objs[("batchruns", NS, name)]
        annotations = {k.replace("kubetask_", "kubetask.io/", 1): v for k, v in values.items()}
        merge(obj["metadata"].setdefault("annotations", {}), annotations)
        self._bump(obj)
        return copy.deepcopy(obj)

    # --- KubeApi ---

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets += 1
        obj = self.objs.get((plural, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(
        self, plural: str, namespaces: Sequence[str], *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        key, _, value = (label_selector or "").partition("=")
        return [
            copy.deepcopy(o)
            for (p, ns, _), o in self.objs.items()
            if p == plural
            and (not namespaces or ns in namespaces)
            and (not key or (o["metadata"].get("labels") or {}).get(key) == value)
        ]

    def _patch(
        self, plural: str, ns: str, name: str, rv: str | None, body: Mapping[str, Any], where: str
    ) -> dict[str, Any]:
        if self.before_patch is not None:
            hook, self.before_patch = self.before_patch, None
            hook(ns, name)
        if self.patch_error is not None:
            error, self.patch_error = self.patch_error, None
            raise error
        obj = self.objs.get((plural, ns, name))
        if obj is None:
            raise Gone(name)
        if rv is not None and rv != obj["metadata"]["resourceVersion"]:
            raise Conflict(name)
        if where == "status":
            self.status_patches.append((name, copy.deepcopy(dict(body))))
            merge(obj.setdefault("status", {}), body)
        else:
            self.meta_patches.append((name, copy.deepcopy(dict(body))))
            merge(obj["metadata"], body)
        self._bump(obj)
        return copy.deepcopy(obj)

    def patch_status(
        self, plural: str, namespace: str, name: str, resource_version: str | None, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        return self._patch(plural, namespace, name, resource_version, status, "status")

    def patch_metadata(
        self, plural: str, namespace: str, name: str, resource_version: str | None, metadata: Mapping[str, Any]
    ) -> dict[str, Any]:
        return self._patch(plural, namespace, name, resource_version, metadata, "metadata")

    def delete(self, plural: str, namespace: str, name: str) -> bool:
        self.deleted.append((plural, name))
        return self.objs.pop((plural, namespace, name), None) is not None

    def job_exists(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.jobs

    def may(self, user: str, groups: Sequence[str], verb: str, api_group: str, resource: str, namespace: str) -> bool:
        self.reviews.append((user, tuple(groups), verb, api_group, resource, namespace))
        if self.may_error is not None:
            raise self.may_error
        return self.enabled is None or namespace in self.enabled

    def emit_event(self, obj: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        self.events.append((obj["metadata"]["name"], reason, message, warning))

    # --- reading back ---

    def obj(self, plural: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.objs[(plural, NS, name)])

    def status_of(self, plural: str, name: str) -> dict[str, Any]:
        return self.obj(plural, name).get("status") or {}

    def reasons(self, name: str) -> list[str]:
        return [r for n, r, _, _ in self.events if n == name]


class FakeDagster:
    """Runs by id, in creation order; ``unavailable`` makes every call fail as an unreachable Dagster."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.runs: dict[str, RunInfo] = {}
        self.order: list[str] = []
        self.submitted: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.reexecuted: list[tuple[str, str, bool]] = []
        self.terminated: list[str] = []
        self.unavailable = False
        self.reject: DagsterRejected | None = None
        self.reexecute_reject: DagsterRejected | None = None
        self.failure_messages: dict[str, str] = {}
        self.get_run_calls = 0
        self.failing = False
        self.available = True
        self._n = 0

    def _check(self) -> None:
        self.failing = self.unavailable
        if self.unavailable:
            raise DagsterUnavailable("connection refused")

    def location_state(self) -> tuple[str, str | None]:
        self._check()
        return "LOADED", None

    def add_run(
        self, status: str, tags: Mapping[str, str], end_time: float | None = None, run_id: str | None = None
    ) -> str:
        self._n += 1
        run_id = run_id or f"run-{self._n}"
        self.runs[run_id] = RunInfo(
            run_id, status, dict(tags), creation_time=self.clock() + self._n * 1e-3, end_time=end_time
        )
        self.order.append(run_id)
        return run_id

    def finish(self, run_id: str, status: str, end_time: float | None = None) -> None:
        r = self.runs[run_id]
        end = end_time if end_time is not None else self.clock()
        self.runs[run_id] = RunInfo(r.run_id, status, r.tags, r.creation_time, r.start_time, end)

    def submit_run(self, job: str, run_config: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        self._check()
        if self.reject is not None:
            raise self.reject
        self.submitted.append((job, copy.deepcopy(dict(run_config)), dict(tags)))
        return self.add_run("QUEUED", tags)

    def reexecute_steps(self, parent_run_id: str, step_keys: list[str]) -> str:
        return self.reexecute_run(parent_run_id, strategy="STEPS " + " ".join(step_keys))

    def reexecute_run(
        self,
        parent_run_id: str,
        *,
        strategy: str = "FROM_FAILURE",
        use_parent_run_tags: bool = True,
        extra_tags: Mapping[str, str] | None = None,
    ) -> str:
        self._check()
        if self.reexecute_reject is not None:
            raise self.reexecute_reject
        self.reexecuted.append((parent_run_id, strategy, use_parent_run_tags))
        parent = self.runs[parent_run_id]
        tags = {**(parent.tags if use_parent_run_tags else {}), PARENT_RUN_ID_TAG: parent_run_id}
        return self.add_run("QUEUED", tags)

    def find_runs(
        self,
        tags: Mapping[str, str],
        *,
        statuses: Iterable[str] | None = None,
        limit: int | None = 100,
        created_after: float | None = None,
    ) -> list[RunInfo]:
        self._check()
        wanted = set(statuses) if statuses is not None else None
        found = [
            self.runs[i]
            for i in self.order
            if all(self.runs[i].tags.get(k) == v for k, v in tags.items())
            and (wanted is None or self.runs[i].status in wanted)
            and (created_after is None or (self.runs[i].creation_time or float("inf")) > created_after)
        ]
        return list(reversed(found))[:limit]

    def get_run(self, run_id: str) -> RunInfo:
        self._check()
        self.get_run_calls += 1
        if run_id not in self.runs:
            raise RunNotFound(run_id)
        return self.runs[run_id]

    def get_runs(self, run_ids: Iterable[str]) -> dict[str, RunInfo]:
        self._check()
        return {r: self.runs[r] for r in run_ids if r in self.runs}

    def failure_message(self, run_id: str) -> str | None:
        self._check()
        return self.failure_messages.get(run_id)

    def terminate_run(self, run_id: str) -> str:
        self._check()
        self.terminated.append(run_id)
        if run_id not in self.runs:
            return "not-found"
        r = self.runs[run_id]
        if r.finished:
            return "not-terminable"
        self.runs[run_id] = RunInfo(r.run_id, "CANCELING", r.tags, r.creation_time)
        return "terminated"
