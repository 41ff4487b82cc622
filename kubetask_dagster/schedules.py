"""Batch schedules: one Dagster schedule per Batch with ``spec.schedule``, behaving like a CronJob.

Each tick runs ``evaluate_tick`` in the code server. It reads the Batch fresh, then:

- ``suspend: true`` -> SkipReason (the schedule's toggle also follows ``suspend``: the bridge starts
  and stops it after each reload, see ``crd_bridge/batches.py``);
- ``concurrencyPolicy`` Forbid -> SkipReason while another BatchRun of the Batch is not finished;
  Replace -> the active ones get ``kubetask.io/stop: "true"`` (the bridge stops them); Allow -> nothing;
- creates the BatchRun ``<batch>-<minutes since epoch of the tick>`` owned by the Batch (a 409 is the
  same tick evaluated again), marked ``kubetask.io/executed-by: schedule/<schedule>`` so the bridge
  does not submit it: the tick's own run (``batch_job``, ``run_key`` = the BatchRun name) executes it;
- deletes the oldest finished BatchRuns beyond ``successfulRunsHistoryLimit`` (3) and
  ``failedRunsHistoryLimit`` (1), and writes ``status.lastScheduleTime`` and ``status.active``.

A dry run (Dagster's "Test schedule", ``futureTicks``) evaluates the same decision without changing
anything (``preview_tick``): a BatchRun created by a dry run would never be run.

Every decision is a pure function of the Batch, its BatchRuns and the tick time (``plan_tick``,
``runs_to_prune``, ``status_from_runs``), shared with the bridge, which refreshes the Batch's status
and history when a BatchRun finishes.

Schedules are declared ``default_status=STOPPED`` and started by the bridge right after the reload
that adds them: a schedule started through the API fires at the next cron boundary, while one that
is RUNNING by default only starts ticking at the daemon's next iteration, losing up to a minute.
"""

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from kubetask import objects, vocabulary
from kubetask.api.batch import DEFAULT_PARALLELISM
from kubetask.domain import status as status_fns
from kubetask.domain.catalog import BatchEntry
from kubetask.domain.runs import batch_run_config
from kubetask.domain.scheduling import (
    batchrun_body,
    batchrun_tags,
    history_limits,
    owned_by,
    plan_tick,
    runs_to_prune,
    scheduled_batchrun_body,
    status_from_runs,
)
from kubetask_dagster.jobs import batch_job
from kubetask_dagster.resources import KubeResource

log = logging.getLogger(__name__)

Obj = Mapping[str, Any]


def run_request(batch: Obj, batchrun: Obj, scheduled_time: datetime) -> RunRequest:
    """The tick's run of ``batch_job`` for ``batchrun`` (``run_key`` = its name: one run per tick)."""
    meta = objects.meta(batchrun)
    spec = batchrun.get("spec") or {}
    parallelism = spec.get("parallelism") or (batch.get("spec") or {}).get("parallelism") or DEFAULT_PARALLELISM
    return RunRequest(
        run_key=meta["name"],
        run_config=batch_run_config(meta["namespace"], meta["name"], meta.get("uid") or "", int(parallelism)),
        tags={**batchrun_tags(batchrun), vocabulary.TAG_SCHEDULED_FOR: status_fns.rfc3339(scheduled_time)},
    )


# --- the tick (I/O through kube.Kube) ---------------------------------------------------------


def list_batch_runs(api: Any, namespace: str, batch: str, batch_uid: str) -> list[dict[str, Any]]:
    """The BatchRuns of a Batch: labelled with its name and owned by this incarnation of it."""
    items = api.list_custom("batchruns", namespace, f"{vocabulary.LABEL_BATCH}={batch}")
    return [r for r in items if owned_by(r, batch_uid)]


def request_stop(api: Any, namespace: str, name: str) -> None:
    api.patch_custom("batchruns", namespace, name, {"metadata": {"annotations": {vocabulary.STOP: "true"}}})


def delete_batch_runs(api: Any, namespace: str, names: Iterable[str]) -> list[str]:
    return [name for name in names if api.delete_custom("batchruns", namespace, name)]


def evaluate_tick(
    api: Any, namespace: str, batch_name: str, schedule_name: str, scheduled_time: datetime, logger: Any = None
) -> RunRequest | SkipReason:
    """One tick of a Batch's schedule (see the module doc); ``api`` is a ``kube.Kube``."""
    logger = logger or log
    batch = api.get_custom("batches", namespace, batch_name)
    if batch is None:
        return SkipReason(f"Batch {namespace}/{batch_name} no longer exists")
    uid = batch["metadata"]["uid"]
    runs = list_batch_runs(api, namespace, batch_name, uid)
    plan = plan_tick(batch, runs, scheduled_time)
    if plan.skip:
        logger.info(f"tick {status_fns.rfc3339(scheduled_time)} of {namespace}/{batch_name} skipped: {plan.skip}")
        return SkipReason(plan.skip)
    for name in plan.stop:
        logger.info(f"concurrencyPolicy Replace: stopping BatchRun {namespace}/{name}")
        request_stop(api, namespace, name)
    body = scheduled_batchrun_body(batch, plan.name, schedule_name, scheduled_time)
    batchrun = api.create_custom("batchruns", namespace, body)
    if batchrun is not None:
        logger.info(f"created BatchRun {namespace}/{plan.name} for the tick {status_fns.rfc3339(scheduled_time)}")
    else:  # this tick evaluated again
        batchrun = api.get_custom("batchruns", namespace, plan.name)
        if batchrun is None or not owned_by(batchrun, uid):
            return SkipReason(f"BatchRun {namespace}/{plan.name} exists and does not belong to this Batch")
    # The BatchRun exists now: whatever happens below, the tick must return its run request.
    try:
        runs = [r for r in runs if r["metadata"]["name"] != plan.name] + [batchrun]
        ok_limit, failed_limit = history_limits((batch.get("spec") or {}).get("schedule"))
        pruned = delete_batch_runs(api, namespace, runs_to_prune(runs, ok_limit, failed_limit))
        if pruned:
            logger.info(f"history limits: deleted BatchRun(s) {', '.join(pruned)}")
        runs = [r for r in runs if r["metadata"]["name"] not in pruned]
        patch = status_from_runs(runs, batch.get("status"))
        patch["lastScheduleTime"] = status_fns.rfc3339(scheduled_time)
        api.patch_status("batches", namespace, batch_name, patch)
    except Exception as e:  # bookkeeping only; the bridge refreshes it when the BatchRun changes
        logger.warning(f"Batch {namespace}/{batch_name}: status or history update failed: {e}")
    return run_request(batch, batchrun, scheduled_time)


def preview_tick(api: Any, namespace: str, batch_name: str, scheduled_time: datetime) -> RunRequest | SkipReason:
    """What a tick at ``scheduled_time`` would do, changing nothing (Dagster's "Test schedule")."""
    batch = api.get_custom("batches", namespace, batch_name)
    if batch is None:
        return SkipReason(f"Batch {namespace}/{batch_name} no longer exists")
    plan = plan_tick(batch, list_batch_runs(api, namespace, batch_name, batch["metadata"]["uid"]), scheduled_time)
    if plan.skip:
        return SkipReason(plan.skip)
    body = batchrun_body(batch, plan.name)  # not created: a preview has no uid yet
    request = run_request(batch, body, scheduled_time)
    note = f" after stopping {', '.join(plan.stop)}" if plan.stop else ""
    return request.with_replaced_attrs(
        tags={**request.tags, vocabulary.TAG_PREVIEW: f"would create BatchRun {plan.name}{note}"}
    )


def is_recorded_tick(context: ScheduleEvaluationContext) -> bool:
    """True for a tick of the scheduler daemon, False for a dry run (the UI's "Test schedule", ``futureTicks``).

    The daemon passes the tick's log key ``[repository, schedule, <tick id>]``; a dry run passes none,
    and the context then makes one ending in the time (``%Y%m%d_%H%M%S``). A dry run must not create
    BatchRuns: nothing would run them.
    """
    key = context.log_key
    return bool(key) and str(key[-1]).isdigit()  # type: ignore[index]  # bool(key) checked it


# --- Dagster definitions ----------------------------------------------------------------------


def _floor_minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def batch_schedule(entry: BatchEntry) -> ScheduleDefinition:
    """The schedule of one scheduled Batch (``entry.schedule`` must be set)."""
    spec = entry.schedule
    assert spec is not None
    ns, batch = entry.namespace, entry.name

    @schedule(
        name=spec.name,
        cron_schedule=spec.cron,
        job=batch_job,
        execution_timezone=spec.time_zone,
        default_status=DefaultScheduleStatus.STOPPED,  # started by the bridge after the reload (module doc)
        description=(
            f"Batch {ns}/{batch}: a BatchRun at `{spec.cron}` ({spec.time_zone}), "
            f"concurrencyPolicy {spec.concurrency_policy}. On/off follows spec.schedule.suspend."
        ),
        metadata={"namespace": ns, "batch": batch, "uid": entry.uid, "kubectl": entry.kubectl},
        tags={vocabulary.TAG_BATCH: batch, vocabulary.TAG_NAMESPACE: ns},
    )
    def _tick(context: ScheduleEvaluationContext, kube: KubeResource):
        when = context.scheduled_execution_time or _floor_minute(datetime.now(UTC))
        if not is_recorded_tick(context):
            return preview_tick(kube.api, ns, batch, when)
        return evaluate_tick(kube.api, ns, batch, spec.name, when, logger=context.log)

    return _tick


def batch_schedules(entries: Iterable[BatchEntry]) -> list[ScheduleDefinition]:
    """One schedule per scheduled Batch; one Dagster refuses (a cron that never fires) is left out."""
    out = []
    for entry in entries:
        if entry.schedule is None:
            continue
        try:
            out.append(batch_schedule(entry))
        except Exception as e:
            log.warning(
                "Batch %s/%s: no Dagster schedule for cron %r (%s)",
                entry.namespace,
                entry.name,
                entry.schedule.cron,
                str(e).splitlines()[0] if str(e) else type(e).__name__,
            )
    return out
