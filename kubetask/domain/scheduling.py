"""The pure half of Batch schedules and history: what a tick does, which BatchRuns to prune, the
Batch's status, and the BatchRun objects Dagster creates (ticks and materializations).

Shared by the code location's schedules and assets (``kubetask_dagster.schedules``, ``.assets``),
which do the I/O, and by the bridge, which refreshes a Batch's status and history when a BatchRun
finishes. Every decision is a function of the Batch, its BatchRuns and the tick time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubetask import objects, vocabulary
from kubetask.api import API_VERSION, BatchRunPhase, OwnerReference
from kubetask.api.batch import MAX_BATCHRUN_NAME
from kubetask.domain import runs
from kubetask.domain import status as status_fns

DEFAULT_SUCCESSFUL_HISTORY = 3
DEFAULT_FAILED_HISTORY = 1


SUCCEEDED = BatchRunPhase.COMPLETED.value

Obj = Mapping[str, Any]


# --- reading BatchRuns (pure) --------------------------------------------------------------------


def is_finished(obj: Obj) -> bool:
    return objects.phase_of(obj) in vocabulary.BATCHRUN_TERMINAL


def stop_requested(obj: Obj) -> bool:
    return vocabulary.stop_requested(objects.annotations_of(obj))


def owned_by(obj: Obj, batch_uid: str) -> bool:
    return batch_uid in objects.owner_uids(obj, vocabulary.KIND_BATCH)


def _created(obj: Obj) -> tuple[str, str]:
    meta = objects.meta(obj)
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


def _finished_at(obj: Obj) -> tuple[str, str, str]:
    status = obj.get("status") or {}
    return (str(status.get("completionTime") or objects.meta(obj).get("creationTimestamp") or ""), *_created(obj))


def active_runs(runs: Iterable[Obj]) -> list[Obj]:
    """Not finished and not being deleted, oldest first."""
    return sorted(
        (r for r in runs if not is_finished(r) and not objects.meta(r).get("deletionTimestamp")), key=_created
    )


def tick_batchrun_name(batch: str, scheduled_time: datetime) -> str:
    """``<batch>-<minutes since the epoch>`` of the tick: the same name for every evaluation of one tick."""
    return f"{batch}-{int(scheduled_time.timestamp()) // 60}"


def history_limits(schedule: Mapping[str, Any] | None) -> tuple[int, int]:
    schedule = schedule or {}
    ok, failed = schedule.get("successfulRunsHistoryLimit"), schedule.get("failedRunsHistoryLimit")
    return (
        DEFAULT_SUCCESSFUL_HISTORY if ok is None else int(ok),
        DEFAULT_FAILED_HISTORY if failed is None else int(failed),
    )


def runs_to_prune(runs: Iterable[Obj], successful_limit: int, failed_limit: int) -> list[str]:
    """Names of finished BatchRuns beyond the history limits, oldest first (Stopped counts as failed)."""
    finished = [r for r in runs if is_finished(r) and not objects.meta(r).get("deletionTimestamp")]
    ok = sorted((r for r in finished if objects.phase_of(r) == SUCCEEDED), key=_finished_at, reverse=True)
    bad = sorted((r for r in finished if objects.phase_of(r) != SUCCEEDED), key=_finished_at, reverse=True)
    extra = ok[max(0, successful_limit) :] + bad[max(0, failed_limit) :]
    return [objects.meta(r)["name"] for r in sorted(extra, key=_finished_at)]


def status_from_runs(runs: Iterable[Obj], current: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``active`` and ``lastSuccessfulTime`` of a Batch from its BatchRuns (a merge patch of its status)."""
    runs = list(runs)
    patch: dict[str, Any] = {"active": [{"name": objects.meta(r)["name"]} for r in active_runs(runs)] or None}
    times = [
        str(t)
        for t in ((r.get("status") or {}).get("completionTime") for r in runs if objects.phase_of(r) == SUCCEEDED)
        if t
    ]
    previous = (current or {}).get("lastSuccessfulTime")
    latest = max(times + ([str(previous)] if previous else []), default=None)  # RFC 3339 UTC sorts as text
    if latest and latest != previous:
        patch["lastSuccessfulTime"] = latest
    return patch


def status_changed(current: Mapping[str, Any] | None, patch: Mapping[str, Any]) -> bool:
    current = current or {}
    return any((current.get(k) or None) != (v or None) for k, v in patch.items())


@dataclass(frozen=True)
class TickPlan:
    """What one tick does: skip (with the reason), or create ``name`` after stopping ``stop``."""

    name: str
    skip: str | None = None
    stop: tuple[str, ...] = ()
    exists: bool = False


def plan_tick(batch: Obj, runs: Sequence[Obj], scheduled_time: datetime) -> TickPlan:
    """The tick's decision from the Batch as it is now and its BatchRuns (owned by it)."""
    meta = objects.meta(batch)
    name = tick_batchrun_name(meta["name"], scheduled_time)
    sched = (batch.get("spec") or {}).get("schedule")
    if meta.get("deletionTimestamp"):
        return TickPlan(name, skip=f"Batch {meta['namespace']}/{meta['name']} is being deleted")
    if not sched:
        return TickPlan(name, skip=f"Batch {meta['namespace']}/{meta['name']} has no spec.schedule any more")
    if sched.get("suspend"):
        return TickPlan(name, skip="spec.schedule.suspend is true")
    existing = next((r for r in runs if objects.meta(r).get("name") == name), None)
    if existing is not None:
        return TickPlan(name, exists=True)  # this tick was evaluated before: its run request is the same
    others = [r for r in active_runs(runs) if objects.meta(r).get("name") != name]
    policy = sched.get("concurrencyPolicy") or "Allow"
    if policy == "Forbid" and others:
        names = ", ".join(objects.meta(r)["name"] for r in others)
        return TickPlan(name, skip=f"concurrencyPolicy Forbid: BatchRun {names} is still active")
    if policy == "Replace":
        return TickPlan(name, stop=tuple(objects.meta(r)["name"] for r in others if not stop_requested(r)))
    return TickPlan(name)


# --- BatchRun objects (pure) -------------------------------------------------------------------


def batch_owner(batch: Obj) -> dict[str, Any]:
    meta = objects.meta(batch)
    return OwnerReference.controller_of("Batch", meta["name"], meta["uid"])


def batchrun_body(batch: Obj, name: str, *, extra_annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A BatchRun of ``batch`` (``spec.batchRef``), owned by it and labelled with its name."""
    meta = objects.meta(batch)
    if len(name) > MAX_BATCHRUN_NAME:
        raise ValueError(f"BatchRun name {name!r} is longer than {MAX_BATCHRUN_NAME} characters")
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "BatchRun",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {vocabulary.LABEL_BATCH: meta["name"]},
            "ownerReferences": [batch_owner(batch)],
        },
        "spec": {"batchRef": meta["name"]},
    }
    if extra_annotations:
        body["metadata"]["annotations"] = dict(extra_annotations)
    return body


def scheduled_batchrun_body(batch: Obj, name: str, schedule_name: str, scheduled_time: datetime) -> dict[str, Any]:
    return batchrun_body(
        batch,
        name,
        extra_annotations={
            vocabulary.EXECUTED_BY: f"{vocabulary.EXECUTED_BY_SCHEDULE}/{schedule_name}",
            vocabulary.REQUESTED_BY: f"schedule/{schedule_name}",
            vocabulary.SCHEDULED_AT: status_fns.rfc3339(scheduled_time),
        },
    )


def batchrun_tags(batchrun: Obj) -> dict[str, str]:
    """The run tags the bridge uses for a BatchRun's run (it finds a run by kind, uid and generation)."""
    return runs.run_tags(batchrun, vocabulary.KIND_BATCHRUN)


# --- BatchRuns of asset materializations ------------------------------------------------------

SUFFIX_LENGTH = 7


def materialization_batchrun_name(batch: str, request_id: str) -> str:
    """``<batch>-m<7 hex of the request>``, the Batch's name cut so that the whole fits a BatchRun name."""
    suffix = "-m" + hashlib.sha256(request_id.encode()).hexdigest()[:SUFFIX_LENGTH]
    return batch[: MAX_BATCHRUN_NAME - len(suffix)].rstrip("-.") + suffix


def materialization_batchrun_body(batch: dict[str, Any], name: str, run_id: str) -> dict[str, Any]:
    """The BatchRun a materialization creates: the bridge runs it (no executed-by annotation)."""
    return batchrun_body(batch, name, extra_annotations={vocabulary.REQUESTED_BY: f"run/{run_id}"})
