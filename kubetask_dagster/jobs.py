"""Dagster jobs: ``task_job`` runs one Task, ``batch_job`` runs a BatchRun's Tasks as mapped steps."""

from dagster import in_process_executor, job, multiprocess_executor

from .batch_ops import expand_batch, run_batch_task, summarize_batch
from .ops import prepare_task, run_agent



def batch_run_config(namespace: str, name: str, uid: str, parallelism: int) -> dict:
    """Run config of ``batch_job`` for one BatchRun: at most ``parallelism`` Tasks at once."""
    return {
        "ops": {"expand_batch": {"config": {"namespace": namespace, "name": name, "uid": uid}}},
        # Steps mostly wait on Kubernetes. A forkserver that has imported the code location once
        # forks each step process ready to run (step start-up halved in paired runs of 10 Tasks).
        "execution": {"config": {"max_concurrent": parallelism, "start_method": {
            "forkserver": {"preload_modules": ["kubetask_dagster.definitions"]}}}},
    }


@job(
    executor_def=in_process_executor,
    description="Run one kubetask.io Task: resolve its contexts, then run its agent Job (one step attempt per Task attempt).",
    tags={"kubetask.io/kind": "Task"},
)
def task_job():
    run_agent(prepare_task())


@job(
    executor_def=multiprocess_executor,  # max_concurrent = the BatchRun's parallelism (batch_run_config)
    description="Run one kubetask.io BatchRun: one mapped step per Task (commonContext + variableContexts[i]).",
    tags={"kubetask.io/kind": "BatchRun"},
)
def batch_job():
    tasks, batchrun = expand_batch()
    summarize_batch(batchrun, tasks.map(run_batch_task).collect())
