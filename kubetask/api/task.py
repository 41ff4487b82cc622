"""Task: one agent run."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import Field

from kubetask.api.base import ApiModel, Condition, Duration, ObjectMeta, cel, k8s_extra
from kubetask.api.contexts import ContextList
from kubetask.api.result import AgentResult, TaskUsage

# The Job of attempt N is `<task>-job-<N>`: 52 + len("-job-") + 6 digits <= 63, the label limit.
MAX_TASK_NAME = 52


class Backoff(ApiModel):
    """Delay before a retry: initialDelay * factor^(retry-1), capped at maxDelay."""

    initial_delay: Duration | None = Field(None, description="Delay before the first retry (default 10s).")
    factor: float | None = Field(None, description="Multiplier per further retry (default 2).", ge=1, le=100)
    max_delay: Duration | None = Field(None, description="Upper bound of the delay (default 10m).")


class RetryPolicy(ApiModel):
    """How often a failed Task is run again, each time in a new Job."""

    limit: int = Field(description="Retries after the first attempt (0 disables retries).", ge=0, le=20)
    backoff: Backoff | None = Field(None, description="Delay between attempts.")


class TaskSpec(ApiModel):
    """What the agent gets (contexts) and how it runs (WorkspaceConfig, timeout, retries)."""

    # As a Job's template: an edit mid-run would mix two generations in one run, or start a second.
    model_config = ApiModel.model_config | {
        "json_schema_extra": k8s_extra(
            cel("self == oldSelf", "spec is immutable: delete the Task and create it again, or create a new one")
        )
    }

    contexts: ContextList = Field(description="Inputs of the agent, resolved and mounted as files.")
    workspace_config_ref: str | None = Field(
        None, description="WorkspaceConfig in the Task's namespace (default: `default`).", max_length=253
    )
    timeout: Duration | None = Field(
        None, description="Maximum run time of one attempt (e.g. 30m); overrides the WorkspaceConfig's defaultTimeout."
    )
    retries: RetryPolicy | None = Field(None, description="Retries of failed attempts.")
    ttl_seconds_after_finished: int | None = Field(
        None, description="Delete the finished Job (not the Task) after this many seconds.", ge=0, le=31536000
    )


class TaskPhase(str, Enum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPED = "Stopped"

    @property
    def terminal(self) -> bool:
        return self in (TaskPhase.COMPLETED, TaskPhase.FAILED, TaskPhase.STOPPED)


class TaskStatus(ApiModel):
    """Where the Task is; written only through the status subresource."""

    phase: TaskPhase | None = Field(None, description="Pending, Queued, Running, Completed, Failed or Stopped.")
    conditions: list[Condition] | None = Field(
        None,
        description="Latest observations (Ready, Succeeded, Stopped...).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    job_name: str | None = Field(None, description="Job of the current or last attempt.")
    pod_name: str | None = Field(None, description="Pod of the current or last attempt.")
    attempt: int | None = Field(None, description="Number of the current or last attempt, from 1.", ge=0)
    exit_code: int | None = Field(None, description="Exit code of the agent container of the last attempt.")
    message: str | None = Field(None, description="Human-readable summary of the last transition.")
    start_time: datetime | None = Field(None, description="When the first attempt started.")
    completion_time: datetime | None = Field(None, description="When the Task reached a terminal phase.")
    dagster_run_id: str | None = Field(None, description="Dagster run executing this Task.")
    dagster_run_url: str | None = Field(None, description="Link to the Dagster run.")
    observed_generation: int | None = Field(None, description="The spec generation this status describes.")
    agent_log: str | None = Field(
        None,
        description="Where the whole agent log of the last attempt (up to 1 MiB, redacted) is kept once its pod is "
        "gone: the Dagster run and step whose stdout holds it.",
    )
    waiting_until: datetime | None = Field(
        None,
        description="Until when the Task waits as Queued for a provider's rate limit to reset (reason RateLimited) "
        "or for its WorkspaceConfig's start quota (reason QuotaExhausted).",
    )
    waits: int | None = Field(
        None,
        description="Times its current Dagster run waited (for rate limits, start quotas); they do not count "
        "against its retries.",
        ge=0,
    )
    usage: TaskUsage | None = Field(
        None,
        description="The usage all its attempts reported, summed (status.result holds the last attempt's only): "
        "what its BatchRun's totals and budget count.",
    )
    result: AgentResult | None = Field(
        None,
        description="What the agent reported: one JSON document of at most 4 KiB written to the file named by "
        "$KUBETASK_RESULT_FILE (the agent container's termination message), redacted like its log and validated. "
        "An invalid document sets the Result condition False with reason InvalidResult; either way the Task's "
        "outcome follows the agent's exit code.",
    )


class Task(ApiModel):
    """Task (kubetask.io/v1alpha1)."""

    api_version: str = "kubetask.io/v1alpha1"
    kind: str = "Task"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: TaskSpec
    status: TaskStatus | None = None
