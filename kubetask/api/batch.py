"""Batch (a template: commonContext x variableContexts, optionally on a schedule) and BatchRun."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated
from zoneinfo import available_timezones

from pydantic import AfterValidator, Field, model_validator

from kubetask.api.base import ApiModel, Condition, Duration, ObjectMeta, cel, k8s_extra
from kubetask.api.contexts import ContextList, VariableContextSet
from kubetask.api.cron import CRON_PATTERN, is_valid_cron
from kubetask.api.result import Budget, UsageTotals
from kubetask.api.task import MAX_TASK_NAME, RetryPolicy

MAX_VARIABLE_CONTEXTS = 10000
# Task `<batchrun>-task-<i>` (i < 10000) must fit MAX_TASK_NAME.
MAX_BATCHRUN_NAME = MAX_TASK_NAME - len("-task-") - len(str(MAX_VARIABLE_CONTEXTS - 1))
# A scheduled BatchRun is `<batch>-<minutes since epoch>` (8 digits until the year 2160).
MAX_SCHEDULED_BATCH_NAME = MAX_BATCHRUN_NAME - 9
DEFAULT_PARALLELISM = 10
MAX_FAILED_TASKS_LISTED = 50


def _cron(expression: str) -> str:
    if not is_valid_cron(expression):
        raise ValueError(f"{expression!r} is not a cron expression such as '0 3 * * *' or '@daily'")
    return expression


def _time_zone(name: str) -> str:
    if name not in available_timezones():
        raise ValueError(f"{name!r} is not an IANA time zone such as Europe/Berlin")
    return name


CronExpression = Annotated[
    str,
    AfterValidator(_cron),
    Field(
        description="Cron expression with five fields (minute hour day-of-month month day-of-week) or a macro such as @daily.",
        max_length=256,
        json_schema_extra=k8s_extra(
            cel(f"self.matches(r'{CRON_PATTERN}')", "{field} must be a cron expression such as '0 3 * * *' or '@daily'")
        ),
    ),
]


class ConcurrencyPolicy(str, Enum):
    ALLOW = "Allow"
    FORBID = "Forbid"
    REPLACE = "Replace"


class BatchSchedule(ApiModel):
    """Run the Batch on a cron schedule, like a CronJob: each tick creates a BatchRun."""

    cron: CronExpression
    time_zone: Annotated[str, AfterValidator(_time_zone)] | None = Field(
        None, description="IANA time zone of the cron expression (default UTC).", max_length=64
    )
    concurrency_policy: ConcurrencyPolicy | None = Field(
        None,
        description="Allow (default), Forbid (skip a tick while a run is active) or Replace (stop the active run).",
    )
    suspend: bool | None = Field(None, description="When true, ticks create no BatchRun.")
    successful_runs_history_limit: int | None = Field(
        None, description="Completed BatchRuns kept (default 3).", ge=0, le=1000
    )
    failed_runs_history_limit: int | None = Field(None, description="Failed BatchRuns kept (default 1).", ge=0, le=1000)


VariableContexts = Annotated[
    list[VariableContextSet],
    Field(
        description="One list per Task (the WHERE): Task i gets commonContext + variableContexts[i].",
        max_length=MAX_VARIABLE_CONTEXTS,
    ),
]


class BatchTemplate(ApiModel):
    """The Tasks of a batch: commonContext (the WHAT) plus one variableContexts entry per Task (the WHERE)."""

    common_context: ContextList = Field(
        description="Contexts every Task gets, before its variable ones. Their inline text is stored once, in the "
        "BatchRun's ConfigMap `<batchrun>-common`, and each Task reads it from there (at most 1,000,000 bytes)."
    )
    variable_contexts: VariableContexts
    workspace_config_ref: str | None = Field(
        None, description="WorkspaceConfig of the Tasks (default: `default`).", max_length=253
    )
    parallelism: int | None = Field(
        None, description=f"At most this many Tasks run at once (default {DEFAULT_PARALLELISM}).", ge=1, le=10000
    )
    timeout: Duration | None = Field(None, description="Default timeout of each Task.")
    retries: RetryPolicy | None = Field(None, description="Default retries of each Task.")
    budget: Budget | None = Field(
        None,
        description="Default budget of each run of this batch (a BatchRun's own budget overrides it), so that the "
        "runs a schedule creates are capped too.",
    )


class BatchSpec(BatchTemplate):
    """A Batch: the template of its Tasks and an optional schedule."""

    schedule: BatchSchedule | None = Field(None, description="Run the Batch on a cron schedule.")


class ActiveRun(ApiModel):
    name: str = Field(description="BatchRun name.")


class BatchStatus(ApiModel):
    """Schedule bookkeeping of a Batch."""

    last_schedule_time: datetime | None = Field(None, description="When the schedule last created a BatchRun.")
    last_successful_time: datetime | None = Field(None, description="When a scheduled BatchRun last completed.")
    active: list[ActiveRun] | None = Field(None, description="BatchRuns of this Batch that are not finished.")
    conditions: list[Condition] | None = Field(None, description="Latest observations.")
    observed_generation: int | None = Field(None, description="The spec generation this status describes.")


class Batch(ApiModel):
    """Batch (kubetask.io/v1alpha1)."""

    api_version: str = "kubetask.io/v1alpha1"
    kind: str = "Batch"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: BatchSpec
    status: BatchStatus | None = None


class BatchRunSpec(ApiModel):
    """Which batch to run: a Batch by name or an inline template, never both."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": k8s_extra(
            cel("has(self.batchRef) != has(self.batchSpec)", "spec must set exactly one of batchRef, batchSpec")
        )
    }

    batch_ref: str | None = Field(
        None, description="Name of a Batch in the same namespace.", min_length=1, max_length=253
    )
    batch_spec: BatchTemplate | None = Field(None, description="An inline batch.")
    parallelism: int | None = Field(None, description="Overrides the Batch's parallelism.", ge=1, le=10000)
    budget: Budget | None = Field(
        None,
        description="What the agents may spend in this run, summed from the usage their results report (overrides "
        "the batch's budget). Once the total passes it no further Task starts (they end Stopped, reason "
        "BudgetExceeded), running Tasks finish, and the BatchRun ends Stopped with reason BudgetExceeded.",
    )

    @model_validator(mode="after")
    def _ref_xor_spec(self) -> BatchRunSpec:
        if (self.batch_ref is None) == (self.batch_spec is None):
            raise ValueError("spec must set exactly one of batchRef, batchSpec")
        return self


class BatchRunPhase(str, Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    PAUSED = "Paused"
    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPED = "Stopped"

    @property
    def terminal(self) -> bool:
        return self in (BatchRunPhase.COMPLETED, BatchRunPhase.FAILED, BatchRunPhase.STOPPED)


class Progress(ApiModel):
    """Task counts by phase."""

    total: int = Field(0, description="Tasks in the run.", ge=0)
    pending: int = Field(0, description="Not started yet.", ge=0)
    queued: int = Field(0, description="Waiting for a concurrency slot.", ge=0)
    running: int = Field(0, description="Running now.", ge=0)
    completed: int = Field(0, description="Completed.", ge=0)
    failed: int = Field(0, description="Failed after their retries.", ge=0)
    stopped: int = Field(0, description="Stopped.", ge=0)


class FailedTask(ApiModel):
    name: str = Field(description="Task name.")
    reason: str = Field(description="Why it failed (the Task's condition reason).")


class BatchRunStatus(ApiModel):
    """Progress of a BatchRun; small at any size (counters, a capped list of failed Tasks)."""

    phase: BatchRunPhase | None = Field(None, description="Pending, Running, Paused, Completed, Failed or Stopped.")
    progress: Progress | None = Field(None, description="Task counts by phase.")
    failed_tasks: list[FailedTask] | None = Field(
        None,
        description=f"The first {MAX_FAILED_TASKS_LISTED} failed Tasks with their reasons.",
        max_length=MAX_FAILED_TASKS_LISTED,
    )
    usage: UsageTotals | None = Field(None, description="The usage its Tasks' results reported, summed.")
    pull_requests: int | None = Field(
        None, description="Pull requests its Tasks reported (each Task's status.result lists its own).", ge=0
    )
    start_time: datetime | None = Field(None, description="When the run started.")
    completion_time: datetime | None = Field(None, description="When the run finished.")
    dagster_run_id: str | None = Field(None, description="Dagster run executing this BatchRun.")
    dagster_run_url: str | None = Field(None, description="Link to the Dagster run.")
    conditions: list[Condition] | None = Field(None, description="Latest observations.")
    observed_generation: int | None = Field(None, description="The spec generation this status describes.")


class BatchRun(ApiModel):
    """BatchRun (kubetask.io/v1alpha1)."""

    api_version: str = "kubetask.io/v1alpha1"
    kind: str = "BatchRun"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: BatchRunSpec
    status: BatchRunStatus | None = None
