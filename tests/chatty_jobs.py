"""Two Dagster jobs that log LOG_LINES lines (each an event row), with and without the ``kube`` resource
(whose set-up keeps the event log's connections open): the connection tests of SQLite and Postgres."""

from dagster import OpExecutionContext, in_process_executor, job, op

from kubetask_dagster.resources import KubeResource

LOG_LINES = 20  # each one an event row


def log_lines(context: OpExecutionContext) -> None:
    for i in range(LOG_LINES):
        context.log.info(f"line {i}")


@op
def chatty(context: OpExecutionContext) -> None:
    log_lines(context)


@op
def chatty_with_kube(context: OpExecutionContext, kube: KubeResource) -> None:
    log_lines(context)


@job(executor_def=in_process_executor)
def plain_job():
    chatty()


@job(executor_def=in_process_executor, resource_defs={"kube": KubeResource()})
def kube_job():
    chatty_with_kube()
