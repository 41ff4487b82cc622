"""The ops of ``pool_job``: standalone Tasks that arrived together run as the steps of one run.

A burst of Tasks pays one run's fixed cost (queue, run worker, planning) instead of one each. Each
Task keeps its own step ``run_pooled_task[<name>__<uid head>]``, running exactly the flow of a
``task_job`` (prepare, then one attempt per step retry), its asset partition and its status.

The bridge claims a Task for a pool by labelling it ``kubetask.io/pool=<pool id>`` before it launches
the run; a step runs its Task only while the Task still carries that id, so a pool the bridge launched
and then lost (it died before writing the run id) never runs a Task that was pooled again since.
Stopping or deleting one Task must not end its neighbours: the bridge leaves a pooled run alone and
each step watches its own Task (one shared listing of the pool's Tasks, at most POOL_WATCH_SECONDS
old) and ends Stopped, its Job deleted, when the Task is stopped or gone.
"""

from typing import Any

from dagster import (
    Config,
    DagsterExecutionInterruptedError,
    DynamicOut,
    DynamicOutput,
    Failure,
    Nothing,
    OpExecutionContext,
    Out,
    op,
)

from kubetask import vocabulary
from kubetask.domain import runs, status
from kubetask_dagster import logs
from kubetask_dagster.execution.executor import step_interrupted
from kubetask_dagster.kube import Kube
from kubetask_dagster.ops.task import TaskRef, TaskReporter, prepare, run_attempt
from kubetask_dagster.resources import KubeResource

POOL_WATCH_SECONDS = 3.0  # how stale a step's view of its Task's stop annotation may be


class PooledTask(Config):
    """One Task of the pool (its namespace is the pool's)."""

    name: str
    uid: str
    generation: int = 1


class PoolRef(Config):
    """Which Tasks this run executes (set by the bridge, which claimed each of them for ``pool``)."""

    namespace: str
    pool: str
    tasks: list[PooledTask]


class PoolWatch:
    """What a pooled Task's step knows of its Task while it runs: whether it is still this pool's."""

    def __init__(self, api: Kube, namespace: str, pool: str, uid: str):
        self.api, self.namespace, self.pool, self.uid = api, namespace, pool, uid

    def members(self, max_age: float = POOL_WATCH_SECONDS) -> dict[str, dict[str, Any]]:
        """The pool's Tasks by uid, as one listing shared by every step of the run."""
        selector = f"{vocabulary.LABEL_POOL}={self.pool}"
        return {t["metadata"]["uid"]: t for t in self.api.list_custom("tasks", self.namespace, selector, max_age)}

    def why_stop(self) -> str | None:
        """Why the Task must stop now (stopped on request, deleted, taken by another pool), or None.
        A listing that fails says None: the Task goes on, and the next look asks again."""
        try:
            members = self.members()
        except Exception:  # noqa: BLE001 - an API server away must not end a running agent's step
            return None
        task = members.get(self.uid)
        if task is None:
            return "the Task was deleted or taken out of its pool"
        if (task["metadata"].get("deletionTimestamp")) is not None:
            return "the Task was deleted"
        if vocabulary.stop_requested(task["metadata"].get("annotations") or {}):
            return f"stopped on request ({vocabulary.STOP})"
        return None


@op(out=DynamicOut(dict, description="One reference per Task of the pool."))
def expand_pool(context: OpExecutionContext, config: PoolRef):
    """Fan out one step per pooled Task (no API call: each step reads its own Task)."""
    for task in config.tasks:
        yield DynamicOutput(
            {"namespace": config.namespace, "pool": config.pool, **task.model_dump()},
            mapping_key=runs.pool_mapping_key(task.name, task.uid),
        )


@op(out=Out(Nothing))
def run_pooled_task(context: OpExecutionContext, item: dict[str, Any], kube: KubeResource) -> None:
    """Run one pooled Task exactly like ``task_job`` would; each retry of this step is one attempt.

    Its outcome lives on the Task CR and the step's materialization: no output to store."""
    with logs.task_logging(item["namespace"], item["name"]):
        _run_pooled_task(context, item, kube)


def _run_pooled_task(context: OpExecutionContext, item: dict[str, Any], kube: KubeResource) -> None:
    api = kube.api
    ns, name, uid = item["namespace"], item["name"], item["uid"]
    obj = api.get_custom("tasks", ns, name)
    if obj is None or obj["metadata"]["uid"] != uid:
        raise Failure(f"Task {ns}/{name} (uid {uid}) no longer exists", allow_retries=False)
    claim = (obj["metadata"].get("labels") or {}).get(vocabulary.LABEL_POOL)
    if claim != item["pool"]:
        # The bridge pooled it again after losing this run's launch: the other pool runs it.
        context.log.info(f"Task {ns}/{name} belongs to pool {claim}, not {item['pool']}; not running it here")
        return
    ref = TaskRef(namespace=ns, name=name, uid=uid, generation=item.get("generation", 1))
    watch = PoolWatch(api, ns, item["pool"], uid)
    try:
        prepared = prepare(context, kube, ref, task_obj=obj)  # each try: a retry reads the contexts anew
        run_attempt(context, kube, prepared, task_obj=obj, stop_check=watch.why_stop)
    except DagsterExecutionInterruptedError:
        why = None if step_interrupted() else watch.why_stop()
        if why is None:
            raise
        reporter = TaskReporter(context, api, api.get_custom("tasks", ns, name) or obj)
        reporter.patch(status.stopped(reporter.current, vocabulary.STOP_REQUESTED, why))
        raise Failure(description=why, allow_retries=False) from None
