"""Dagster jobs: ``task_job`` runs one Task, ``batch_job`` runs a BatchRun's Tasks as mapped steps,
``pool_job`` runs standalone Tasks that arrived together as mapped steps of one run."""

from dagster import in_process_executor, job

from kubetask import vocabulary
from kubetask_dagster.execution.executor import threaded_executor
from kubetask_dagster.ops.batch import expand_batch, run_batch_task, summarize_batch
from kubetask_dagster.ops.pool import expand_pool, run_pooled_task
from kubetask_dagster.ops.task import prepare_task, run_agent


@job(
    executor_def=in_process_executor,
    description="Run one kubetask.io Task: resolve its contexts, then run its agent Job (one step attempt per Task attempt).",
    tags={vocabulary.TAG_KIND: vocabulary.KIND_TASK},
)
def task_job():
    run_agent(prepare_task())


@job(
    executor_def=threaded_executor,  # a thread per running Task; max_concurrent = the BatchRun's parallelism
    description="Run one kubetask.io BatchRun: one mapped step per Task (commonContext + variableContexts[i]).",
    tags={vocabulary.TAG_KIND: vocabulary.KIND_BATCHRUN},
)
def batch_job():
    tasks, batchrun = expand_batch()
    summarize_batch(batchrun, tasks_done=tasks.map(run_batch_task).collect())


@job(
    executor_def=threaded_executor,  # a thread per Task; max_concurrent = the pool's size (each runs at once)
    description="Run standalone kubetask.io Tasks that arrived together: one mapped step per Task, as task_job would run it.",
    tags={vocabulary.TAG_KIND: vocabulary.KIND_TASK_POOL},
)
def pool_job():
    expand_pool().map(run_pooled_task)
