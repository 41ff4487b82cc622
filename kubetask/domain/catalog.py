"""The Batches the code location is built from: one asset per Batch, one schedule per scheduled Batch.

The code location lists Batch CRs once, when it loads (``kubetask_dagster.catalog``; ``dagster
code-server start`` re-imports the module on every reload, and the bridge reloads it when a Batch
changes).

``entries_from_batches`` is the pure part: Batch objects as the API server returns them -> small,
JSON-serialisable ``BatchEntry`` records (asset key, partitions, schedule parameters). The records,
not the Batches, are what Dagster keeps as reconstruction metadata, so a run worker rebuilds the same
definitions without listing Batches again (``definitions.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

from kubetask.api import BatchSchedule
from kubetask.api.batch import DEFAULT_PARALLELISM
from kubetask.api.cron import to_five_fields

log = logging.getLogger(__name__)

ENV_NAMESPACES = "KUBETASK_NAMESPACES"
"""Comma list of namespaces whose Batches become definitions; unset or empty: all namespaces."""
ENV_CATALOG = "KUBETASK_CATALOG"
"""``off`` (or ``0``/``false``): do not list Batches at all (no Batch assets or schedules)."""

LIST_TIMEOUT = (3, 20)  # connect, read: a slow API server must not hold the code location's load
PAGE_SIZE = 200
SCHEDULE_PREFIX = "batch__"
OP_PREFIX = "request_batchrun__"
DEFAULT_TIME_ZONE = "UTC"


def asset_key_path(namespace: str, batch: str) -> list[str]:
    """``["kubetask", <ns>, "batches", <batch>]``: the key ``batch_ops.batch_asset_key`` records Task events on."""
    return ["kubetask", namespace, "batches", batch]


def partition_key(index: int) -> str:
    """The partition of Task ``index`` (``batch_ops.run_batch_task`` uses the same string)."""
    return f"task-{index}"


def _dagster_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def group_name(namespace: str) -> str:
    """Dagster asset group of a namespace's Batches (group names allow only ``[A-Za-z0-9_]``)."""
    return f"kubetask_{_dagster_name(namespace)}"


def dagster_id(namespace: str, batch: str) -> str:
    """``<ns>__<batch>`` with ``-`` and ``.`` turned into ``_``: the Batch's part of Dagster names.

    Kubernetes names never contain ``_``, so the result is unique unless a name holds ``.`` or ``--``
    (``a--b``/``a``+``b``, ``a.b``/``a-b``); then a short hash of the real names keeps it unique. It
    depends only on the Batch's own namespace and name, so a schedule's state (on/off, ticks)
    survives reloads.
    """
    name = f"{_dagster_name(namespace)}__{_dagster_name(batch)}"
    if "." in namespace + batch or "--" in namespace + batch:
        name += "_" + hashlib.sha256(f"{namespace}/{batch}".encode()).hexdigest()[:8]
    return name


def schedule_name(namespace: str, batch: str) -> str:
    """``batch__<ns>__<batch>`` (Dagster names allow only ``[A-Za-z0-9_]``)."""
    return SCHEDULE_PREFIX + dagster_id(namespace, batch)


def op_name(namespace: str, batch: str) -> str:
    """The op of the Batch's asset (the step a materialization runs)."""
    return OP_PREFIX + dagster_id(namespace, batch)


@dataclass(frozen=True)
class ScheduleSpec:
    """What Dagster needs to know about a Batch's schedule (the tick re-reads the Batch for the rest)."""

    name: str
    cron: str  # five fields (macros expanded)
    time_zone: str
    suspend: bool
    concurrency_policy: str
    successful_runs_history_limit: int | None = None
    failed_runs_history_limit: int | None = None


@dataclass(frozen=True)
class BatchEntry:
    """One Batch as the code location sees it."""

    namespace: str
    name: str
    uid: str
    generation: int
    tasks: int
    parallelism: int
    workspace_config: str | None = None
    schedule: ScheduleSpec | None = None

    @property
    def asset_key(self) -> list[str]:
        return asset_key_path(self.namespace, self.name)

    @property
    def partition_keys(self) -> list[str]:
        return [partition_key(i) for i in range(self.tasks)]

    @property
    def group_name(self) -> str:
        return group_name(self.namespace)

    @property
    def op_name(self) -> str:
        return op_name(self.namespace, self.name)

    @property
    def kubectl(self) -> str:
        return f"kubectl -n {self.namespace} get batch {self.name}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchEntry:
        values = dict(data)
        schedule = values.pop("schedule", None)
        return cls(**values, schedule=ScheduleSpec(**schedule) if schedule else None)


def schedule_spec(namespace: str, batch: str, raw: Mapping[str, Any] | None) -> ScheduleSpec | None:
    """The Dagster side of ``spec.schedule``, or None (no schedule, or one the API server should have refused)."""
    if not raw:
        return None
    try:
        sched = BatchSchedule.model_validate(raw)
    except ValidationError as e:
        log.warning("Batch %s/%s: ignoring an invalid spec.schedule: %s", namespace, batch, e.errors()[0].get("msg"))
        return None
    return ScheduleSpec(
        name=schedule_name(namespace, batch),
        cron=to_five_fields(sched.cron),
        time_zone=sched.time_zone or DEFAULT_TIME_ZONE,
        suspend=bool(sched.suspend),
        concurrency_policy=(sched.concurrency_policy.value if sched.concurrency_policy else "Allow"),
        successful_runs_history_limit=sched.successful_runs_history_limit,
        failed_runs_history_limit=sched.failed_runs_history_limit,
    )


def entry_from_batch(obj: Mapping[str, Any]) -> BatchEntry | None:
    """One Batch object -> its entry; None for an object without a namespace/name (never raises)."""
    meta = obj.get("metadata") or {}
    ns, name = meta.get("namespace"), meta.get("name")
    if not ns or not name:
        return None
    spec = obj.get("spec") or {}
    variable = spec.get("variableContexts")
    parallelism = spec.get("parallelism")
    return BatchEntry(
        namespace=ns,
        name=name,
        uid=meta.get("uid") or "",
        generation=int(meta.get("generation") or 1),
        tasks=len(variable) if isinstance(variable, list) else 0,
        parallelism=parallelism if isinstance(parallelism, int) and parallelism > 0 else DEFAULT_PARALLELISM,
        workspace_config=spec.get("workspaceConfigRef"),
        schedule=schedule_spec(ns, name, spec.get("schedule")),
    )


def entries_from_batches(objs: Iterable[Mapping[str, Any]]) -> list[BatchEntry]:
    """Batch objects -> entries, sorted by (namespace, name); Batches being deleted are left out."""
    entries = []
    for obj in objs:
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            continue
        entry = entry_from_batch(obj)
        if entry is not None:
            entries.append(entry)
    return sorted(entries, key=lambda e: (e.namespace, e.name))


def dumps(entries: Sequence[BatchEntry]) -> str:
    return json.dumps([e.to_dict() for e in entries], separators=(",", ":"), sort_keys=True)


def loads(text: str) -> list[BatchEntry]:
    return [BatchEntry.from_dict(d) for d in json.loads(text)]


def configured_namespaces(env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    return [ns.strip() for ns in (env.get(ENV_NAMESPACES) or "").split(",") if ns.strip()]


def catalog_enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return (env.get(ENV_CATALOG) or "on").strip().lower() not in ("off", "0", "false", "no")
