"""Dagster jobs: ``task_job`` runs one Task."""

from dagster import in_process_executor, job

from .ops import prepare_task, run_agent


@job(
    executor_def=in_process_executor,
    description="Run one kubetask.io Task: resolve its contexts, then run its agent Job (one step attempt per Task attempt).",
    tags={"kubetask.io/kind": "Task"},
)
def task_job():
    run_agent(prepare_task())
