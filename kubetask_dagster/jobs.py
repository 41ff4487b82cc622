"""Dagster jobs: ``task_job`` runs one Task, ``batch_job`` runs a BatchRun's Tasks as mapped steps."""

from dagster import in_process_executor, job

from .batch_ops import expand_batch, run_batch_task, summarize_batch
from .executor import threaded_executor
from .ops import prepare_task, run_agent

def batch_run_config(namespace: str, name: str, uid: str, parallelism: int) -> dict:
    """Run config of ``batch_job`` for one BatchRun: at most ``parallelism`` Tasks at once."""
    return {
        "ops": {"expand_batch": {"config": {"namespace": namespace, "name": name, "uid": uid}}},
        "execution": {"config": {"max_concurrent": parallelism}},
    }


@job(
    executor_def=in_process_executor,
    description="Run one kubetask.io Task: resolve its contexts, then run its agent Job (one step attempt per Task attempt).",
    tags={"kubetask.io/kind": "Task"},
)
def task_job():
    run_agent(prepare_task())


@job(
    executor_def=threaded_executor,  # a thread per running Task; max_concurrent = the BatchRun's parallelism
    description="Run one kubetask.io BatchRun: one mapped step per Task (commonContext + variableContexts[i]).",
    tags={"kubetask.io/kind": "BatchRun"},
)
def batch_job():
    tasks, batchrun = expand_batch()
    summarize_batch(batchrun, tasks_done=tasks.map(run_batch_task).collect())
