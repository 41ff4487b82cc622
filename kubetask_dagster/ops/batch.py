"""The ops of ``batch_job``: expand a BatchRun into Tasks, run each Task as a mapped step, summarise.

Each mapped step ``run_batch_task[task_<i>]`` runs exactly the flow of a standalone Task
(``taskflow``); a retry of the step is an attempt of the Task. "Re-execute from failure" in
Dagster's UI reruns the failed and never-started steps only, and a step whose Task already
completed returns at once, so a rerun never runs a completed Task again.
"""

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dagster import (
    AssetKey,
    AssetMaterialization,
    Config,
    DagsterExecutionInterruptedError,
    DynamicOut,
    DynamicOutput,
    Failure,
    In,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    op,
)

from kubetask import objects, vocabulary
from kubetask.api import Batch, BatchRun, TaskPhase
from kubetask.domain import batches, results, status
from kubetask.domain.errors import TaskError
from kubetask_dagster import logs
from kubetask_dagster.execution.executor import step_interrupted
from kubetask_dagster.kube import Kube
from kubetask_dagster.ops.task import TaskRef, TaskReporter, prepare, run_attempt
from kubetask_dagster.resources import KubeResource

PAUSE_POLL_SECONDS = 2.0
BUDGET_MAX_AGE_SECONDS = 2.0  # the steps of a BatchRun with a budget share a listing of its Tasks' usage
# until one of them ends (its step forgets the listing)
CREATE_WORKERS = 16


class BatchRunRef(Config):
    """Which BatchRun this run executes (set by the bridge, a schedule tick or a materialization)."""

    namespace: str
    name: str
    uid: str = ""


def batch_asset_key(namespace: str, batch: str) -> AssetKey:
    """One asset per Batch; each Task index is a partition."""
    return AssetKey(["kubetask", namespace, "batches", batch])


def _patch_batchrun(api: Kube, ns: str, name: str, patch: dict[str, Any]) -> None:
    api.patch_status("batchruns", ns, name, patch)


def _load_batchrun(api: Kube, ref: BatchRunRef) -> dict[str, Any]:
    obj = api.get_custom("batchruns", ref.namespace, ref.name)
    if obj is None or (ref.uid and obj["metadata"]["uid"] != ref.uid):
        raise Failure(f"BatchRun {ref.namespace}/{ref.name} no longer exists", allow_retries=False)
    return obj


def _fail_batchrun(context: OpExecutionContext, api: Kube, obj: dict[str, Any], reason: str, message: str) -> None:
    meta = obj["metadata"]
    current = obj.get("status") or {}
    conditions = status.set_condition(
        current.get("conditions"), vocabulary.READY, "False", reason, message, status.now()
    )
    _patch_batchrun(
        api,
        meta["namespace"],
        meta["name"],
        {
            "phase": "Failed",
            "conditions": conditions,
            "completionTime": status.rfc3339(status.now()),
        },
    )
    api.emit_event(obj, reason, message, warning=True)
    raise Failure(description=f"{reason}: {message}", allow_retries=False)


def _create_task(api: Kube, body: dict[str, Any], batchrun: str) -> dict[str, Any]:
    """Create one Task, Queued (idempotently: a Task of this BatchRun that exists is kept as it is)."""
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    created = api.create_custom("tasks", ns, body)
    if created is not None:
        queued = status.queued({}, message="waiting for its turn in the BatchRun", reason=vocabulary.WAITING_FOR_TURN)
        api.patch_status("tasks", ns, name, queued)
        return created
    obj = api.get_custom("tasks", ns, name)
    if obj is None or (obj["metadata"].get("labels") or {}).get(vocabulary.LABEL_BATCH_RUN) != batchrun:
        raise Failure(
            f"{vocabulary.TASK_NAME_CONFLICT}: Task {ns}/{name} exists and does not belong to BatchRun {batchrun}",
            allow_retries=False,
        )
    return obj


def _create_tasks(api: Kube, tasks: list[dict[str, Any]], batchrun: str) -> list[dict[str, Any]]:
    """Create every Task, a few at a time (a 1,000-Task BatchRun would otherwise wait 2,000 round trips)."""
    with ThreadPoolExecutor(max_workers=CREATE_WORKERS, thread_name_prefix="create-task") as pool:
        return list(pool.map(lambda body: _create_task(api, body, batchrun), tasks))


@op(
    out={
        "tasks": DynamicOut(dict, description="One Task reference per variableContexts entry."),
        "batchrun": Out(dict, description="The BatchRun, for the summary."),
    }
)
def expand_batch(context: OpExecutionContext, config: BatchRunRef, kube: KubeResource):
    """Expand the BatchRun (its Batch or inline spec) into Task CRs and fan out one step per Task."""
    api = kube.api
    obj = _load_batchrun(api, config)
    batchrun = BatchRun.model_validate(obj)
    if vocabulary.stop_requested(batchrun.metadata.annotations):
        # stopped while its run waited in the queue: start nothing (a rerun clears the annotation first)
        raise Failure(
            description=f"BatchRun {config.namespace}/{config.name} was stopped before it started", allow_retries=False
        )
    batch_spec = None
    if batchrun.spec.batch_ref:
        batch_obj = api.get_custom("batches", config.namespace, batchrun.spec.batch_ref)
        if batch_obj is None:
            _fail_batchrun(
                context,
                api,
                obj,
                vocabulary.BATCH_NOT_FOUND,
                f'Batch "{batchrun.spec.batch_ref}" not found in namespace "{config.namespace}"',
            )
        batch_spec = Batch.model_validate(batch_obj).spec
    template = batches.template_of(batchrun, batch_spec)
    try:
        batches.check_budget(template, max_tasks=kube.batch_max_tasks, max_bytes=kube.batch_max_bytes)
        common_config_map, common = batches.share_common(batchrun, template)
        if common_config_map is not None:  # before the Tasks that read it
            api.apply_config_map(common_config_map)
    except TaskError as e:
        _fail_batchrun(context, api, obj, e.reason, e.message)
    tasks = _create_tasks(api, batches.expand(batchrun, template, common), config.name)
    current = obj.get("status") or {}
    now = status.rfc3339(status.now())
    patch = {
        "phase": "Running" if current.get("phase") in (None, "Pending") else current["phase"],
        "startTime": current.get("startTime") or now,
        "dagsterRunId": context.run_id,
        "progress": {**(current.get("progress") or {}), "total": len(tasks)},
        "observedGeneration": obj["metadata"].get("generation"),
    }
    if current.get("phase") in vocabulary.BATCHRUN_TERMINAL and current.get("dagsterRunId") != context.run_id:
        patch.update(phase="Running", completionTime=None)  # a re-execution of all steps reopens the BatchRun
    _patch_batchrun(api, config.namespace, config.name, patch)
    yield Output(
        {"namespace": config.namespace, "name": config.name, "uid": obj["metadata"]["uid"]},
        "batchrun",
        metadata={"tasks": len(tasks), "parallelism": batches.effective_parallelism(batchrun, template)},
    )
    budget = batches.effective_budget(batchrun, template)
    for index, task in enumerate(tasks):
        meta = task["metadata"]
        yield DynamicOutput(
            {
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
                "generation": meta.get("generation", 1),
                "index": index,
                "batchrun": config.name,
                "batch": batchrun.spec.batch_ref or "",
                "budget": budget,
            },
            mapping_key=batches.mapping_key(index),
            output_name="tasks",
        )


def _wait_while_paused(context: OpExecutionContext, api: Kube, ns: str, batchrun: str) -> dict[str, Any] | None:
    """Dispatch nothing while the BatchRun carries the pause annotation (running Tasks go on); the
    BatchRun as last read (None: it is gone)."""
    logged = False
    while True:
        if step_interrupted():
            raise DagsterExecutionInterruptedError()
        obj = api.get_custom("batchruns", ns, batchrun, max_age=PAUSE_POLL_SECONDS / 2)
        if obj is None or not vocabulary.pause_requested(objects.annotations_of(obj)):
            return obj
        if not logged:
            context.log.info(f"BatchRun {ns}/{batchrun} is paused; waiting before starting this Task")
            logged = True
        time.sleep(PAUSE_POLL_SECONDS)


@op(out=Out(Nothing))
def run_batch_task(context: OpExecutionContext, item: dict[str, Any], kube: KubeResource) -> None:
    """Run one Task of the BatchRun exactly like a standalone Task; a completed Task is not run again.

    Its outcome lives on the Task CR (and the step's materialization), so the step has no output to
    store and the summary loads none: two event-log rows and a storage write fewer per Task."""
    with logs.task_logging(item["namespace"], item["name"]):
        _run_batch_task(context, item, kube)


def _run_batch_task(context: OpExecutionContext, item: dict[str, Any], kube: KubeResource) -> None:
    api = kube.api
    ns, name = item["namespace"], item["name"]
    _wait_while_paused(context, api, ns, item["batchrun"])
    obj = api.get_custom("tasks", ns, name)
    if obj is None:
        raise Failure(f"Task {ns}/{name} was deleted", allow_retries=False)
    if (obj.get("status") or {}).get("phase") == TaskPhase.COMPLETED.value:
        context.log.info(f"Task {ns}/{name} already completed; not running it again")
        return
    spent = _budget_spent(api, item.get("budget"), ns, item["batchrun"])
    if spent:  # running Tasks finish; this one does not start
        reporter = TaskReporter(context, api, obj)
        reporter.patch(status.stopped(reporter.current, vocabulary.BUDGET_EXCEEDED, f"not started: {spent}"))
        reporter.event(vocabulary.BUDGET_EXCEEDED, f"not started: {spent}", warning=True)
        return
    ref = TaskRef(namespace=ns, name=name, uid=obj["metadata"]["uid"], generation=obj["metadata"].get("generation", 1))
    prepared = prepare(context, kube, ref, task_obj=obj)
    lineage = (batch_asset_key(ns, item["batch"]), f"task-{item['index']}") if item["batch"] else None
    try:
        run_attempt(context, kube, prepared, lineage=lineage, task_obj=obj)
    finally:  # its result may have spent the budget: the next Task to start reads the spend anew
        api.forget("tasks", ns, label_selector=_tasks_of(item["batchrun"]))


def _budget_spent(api: Kube, budget: dict[str, Any] | None, ns: str, batchrun: str) -> str | None:
    """Why the BatchRun's ``budget`` is spent (its Tasks' reported usage, read at most
    BUDGET_MAX_AGE_SECONDS ago), or None while it is not or it has none."""
    if not budget:
        return None
    tasks = api.list_custom("tasks", ns, _tasks_of(batchrun), max_age=BUDGET_MAX_AGE_SECONDS)
    return results.budget_spent(budget, results.totals(t.get("status") for t in tasks)["usage"])


def _tasks_of(batchrun: str) -> str:
    """The label selector of a BatchRun's Tasks."""
    return f"{vocabulary.LABEL_BATCH_RUN}={batchrun}"


def summarize(api: Kube, ns: str, name: str) -> dict[str, Any]:
    """The BatchRun's status computed from its Tasks (level-based: counts are never incremented)."""
    obj = api.get_custom("batchruns", ns, name)
    if obj is None:
        return {}
    tasks = api.list_custom("tasks", ns, _tasks_of(name))
    rows = sorted(
        ((t["metadata"]["name"], (t.get("status") or {}).get("phase"), _reason(t)) for t in tasks),
        key=lambda row: batches.index_of(row[0]) or 0,
    )
    total = ((obj.get("status") or {}).get("progress") or {}).get("total", len(rows))
    meta_annotations = obj["metadata"].get("annotations") or {}
    summary = status.batchrun_summary(
        rows,
        total,
        paused=vocabulary.pause_requested(meta_annotations),
        stopped=vocabulary.stop_requested(meta_annotations),
    )
    return summary | results.totals(t.get("status") for t in tasks)


def _reason(task: dict[str, Any]) -> str | None:
    for condition in (task.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Succeeded":
            return condition.get("reason")
    return None


@op(ins={"tasks_done": In(Nothing)})
def summarize_batch(context: OpExecutionContext, batchrun: dict[str, Any], kube: KubeResource) -> dict[str, Any]:
    """Write the BatchRun's final summary (when every step succeeded; otherwise the bridge does)."""
    api = kube.api
    config = BatchRunRef(**batchrun)
    summary = summarize(api, config.namespace, config.name)
    if summary:
        patch = {**summary, "dagsterRunId": context.run_id}
        if summary["phase"] in ("Completed", "Failed", "Stopped"):
            patch["completionTime"] = status.rfc3339(status.now())
        _patch_batchrun(api, config.namespace, config.name, patch)
    context.log_event(
        AssetMaterialization(
            AssetKey(["kubetask", config.namespace, "batchruns"]),
            partition=None,
            metadata={
                "batchrun": config.name,
                "progress": MetadataValue.json(summary.get("progress", {})),
                "phase": summary.get("phase", ""),
                **_totals_metadata(summary),
            },
        )
    )
    return summary


def _totals_metadata(summary: dict[str, Any]) -> dict[str, Any]:
    """The BatchRun's summed usage and pull-request count as Dagster metadata."""
    usage = summary.get("usage") or {}
    return {
        "pull_requests": summary.get("pullRequests", 0),
        "input_tokens": usage.get("inputTokens", 0),
        "output_tokens": usage.get("outputTokens", 0),
        "cost_usd": usage.get("costUSD", 0.0),
    }
