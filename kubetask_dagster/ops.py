"""The ops of ``task_job``: prepare a standalone Task's context files, then run its agent's Job."""

from typing import Any

from dagster import OpExecutionContext, Out, op

from . import taskflow
from .taskflow import KubeResource, TaskRef


@op(out=Out(dict, description="The context files (paths, keys, hashes; no content) and Git checkouts."))
def prepare_task(context: OpExecutionContext, config: TaskRef, kube: KubeResource) -> dict[str, Any]:
    """Resolve the Task's contexts, aggregate them per filePath and write its ConfigMap and Secret."""
    return taskflow.prepare(context, kube, config)


@op
def run_agent(context: OpExecutionContext, prepared: dict[str, Any], kube: KubeResource) -> dict[str, Any]:
    """Run one attempt of the agent's Job; each retry of this step is one attempt of the Task."""
    return taskflow.run_attempt(context, kube, prepared)
