"""Every public string of kubetask.io: labels, annotations, Dagster run tags, condition reasons, phases.

One place, so the bridge and the ops cannot disagree on a spelling or on how an annotation is read:
each annotation the controllers honour has exactly one parser here (``stop_requested``,
``pause_requested``, ``rerun_request``), and both sides call it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetask.api.batch import BatchRunPhase
from kubetask.api.task import TaskPhase

# --- annotations the controllers honour -----------------------------------------------------------

STOP = "kubetask.io/stop"
"""`"true"` (any case) on a Task or BatchRun: terminate its Dagster run and stop its Jobs."""

PAUSE = "kubetask.io/pause"
"""`"true"` (any case) on a BatchRun: dispatch no new Tasks (running ones finish); remove it to resume."""

RERUN = "kubetask.io/rerun"
"""`"failed"` on a finished BatchRun: re-execute its failed and never-started Tasks; cleared when taken."""

RERUN_FAILED = "failed"
"""The one value ``kubetask.io/rerun`` accepts."""

# --- annotations the controllers write --------------------------------------------------------------

EXECUTED_BY = "kubetask.io/executed-by"
"""On a Task created by a BatchRun's run: the Dagster run that executes it (the bridge leaves it alone)."""

EXECUTED_BY_BATCHRUN = "batchrun"
"""Prefix of ``kubetask.io/executed-by`` on a BatchRun's Tasks (``batchrun/<name>``)."""

EXECUTED_BY_SCHEDULE = "schedule"
"""Prefix of ``kubetask.io/requested-by`` on a BatchRun a Batch's schedule created."""

SCHEDULED_AT = "kubetask.io/scheduled-at"
"""On a scheduled BatchRun: the tick it was created for (RFC 3339)."""

REQUESTED_BY = "kubetask.io/requested-by"
"""On a BatchRun created from Dagster (schedule tick or asset materialization): who asked."""

DAGSTER_RUN_ID = "kubetask.io/dagster-run-id"
"""On a Task's Job and pod: the Dagster run that created it."""

TASK_UID = "kubetask.io/task-uid"
"""On a Task's Job and pod: the uid of the Task it belongs to."""

# --- labels -----------------------------------------------------------------------------------------

LABEL_TASK = "kubetask.io/task"
LABEL_BATCH = "kubetask.io/batch"
LABEL_BATCH_RUN = "kubetask.io/batch-run"
LABEL_ATTEMPT = "kubetask.io/attempt"
LABEL_POOL = "kubetask.io/pool"
"""On a standalone Task the bridge runs in a pooled run: the pool's id (its claim, written before the run
is launched). The pool's step runs the Task only while the Task carries this very id."""
KUEUE_QUEUE_NAME = "kueue.x-k8s.io/queue-name"
"""The Job label naming the Kueue LocalQueue that admits it."""
SLOT_GATE = "kubetask.io/slot"
"""The scheduling gate holding a Kueue-admitted agent pod until its ``maxConcurrentTasks`` slot is taken."""
LABEL_APP = "app"
APP = "kubetask"
PROTECTED_LABEL_PREFIX = "kubetask.io/"
"""Labels under this prefix that kubetask sets on a pod are never overridden by ``podLabels``."""

# --- Dagster run tags (the contract between the bridge and the code location) -----------------------

TAG_KIND = "kubetask.io/kind"
TAG_NAMESPACE = "kubetask.io/namespace"
TAG_NAME = "kubetask.io/name"
TAG_UID = "kubetask.io/uid"
TAG_GENERATION = "kubetask.io/generation"
TAG_BATCH = "kubetask.io/batch"
TAG_SCHEDULED_FOR = "kubetask.io/scheduled-for"
TAG_PREVIEW = "kubetask.io/preview"
TAG_POOL = "kubetask.io/pool"
"""On a pooled run: the pool's id, as on its Tasks' ``kubetask.io/pool`` label."""

KIND_TASK = "Task"
KIND_BATCH = "Batch"
KIND_BATCHRUN = "BatchRun"
KIND_TASK_POOL = "TaskPool"
"""The run kind of ``pool_job``: many standalone Tasks of one namespace, a step each."""
KIND_WORKSPACE_CONFIG = "WorkspaceConfig"

# --- phases -----------------------------------------------------------------------------------------

TASK_TERMINAL = frozenset(p.value for p in TaskPhase if p.terminal)
BATCHRUN_TERMINAL = frozenset(p.value for p in BatchRunPhase if p.terminal)
TASK_RERUNNABLE = frozenset({TaskPhase.FAILED.value, TaskPhase.STOPPED.value})

# --- condition types --------------------------------------------------------------------------------

READY = "Ready"
RESULT = "Result"
"""Condition: whether the agent's result document was recorded (True) or refused (False)."""
RESULT_RECORDED = "ResultRecorded"
INVALID_RESULT = "InvalidResult"
SUCCEEDED = "Succeeded"

# --- condition and Event reasons --------------------------------------------------------------------
# Context resolution and the Job (``TaskError`` reasons, written by the run's ops).
CONTEXT_REF_NOT_FOUND = "ContextRefNotFound"
"""A ConfigMap, Secret or key that a context (or a RemoteFile header) refers to does not exist."""
REMOTE_FILE_UNAVAILABLE = "RemoteFileUnavailable"
"""A RemoteFile could not be fetched: connection error, timeout, HTTP status >= 400, too large, not text."""
REMOTE_FILE_REFUSED = "RemoteFileRefused"
"""A RemoteFile's host (or a redirect's) resolves to loopback, link-local, private or another non-public address."""
CONTEXT_TOO_LARGE = "ContextTooLarge"
"""The context files do not fit the 1 MiB limit of a ConfigMap or Secret."""
CONTEXT_KEY_CONFLICT = "ContextKeyConflict"
"""Two context file paths still map to the same ConfigMap key after disambiguation (practically never)."""
MOUNT_PATH_CONFLICT = "MountPathConflict"
"""Two mounts of the agent container (context file, credential, Git checkout, /tools) share a path."""
CREDENTIAL_NOT_FOUND = "CredentialNotFound"
"""The Secret of a credential whose env var takes the Secret's only key does not exist."""
CREDENTIAL_KEY_AMBIGUOUS = "CredentialKeyAmbiguous"
"""A credential names no secretRef.key for its env var, and its Secret holds no key or several."""
MOUNT_PATH_REFUSED = "MountPathRefused"
"""A context file, Git checkout or credential would be mounted in a system directory (/usr, /etc...) or under /tools."""
NAME_CONFLICT = "NameConflict"
"""The Task's ConfigMap, Secret or Job name is taken by an object that is not the Task's (nor its predecessor's)."""
WORKSPACE_CONFIG_NOT_FOUND = "WorkspaceConfigNotFound"
"""The Task's WorkspaceConfig does not exist in its namespace."""
BATCH_TOO_LARGE = "BatchTooLarge"
"""A BatchRun's Tasks would be more, or bigger together, than the operator's budget."""
BATCH_NOT_FOUND = "BatchNotFound"
"""A BatchRun's ``batchRef`` names no Batch."""
TASK_NAME_CONFLICT = "TaskNameConflict"
"""A Task a BatchRun would create already exists and belongs to something else."""

# The agent's pod (written by the run's ops).
JOB_CREATED = "JobCreated"
AGENT_FAILED = "AgentFailed"
INIT_CONTAINER_FAILED = "InitContainerFailed"
IMAGE_PULL_FAILED = "ImagePullFailed"
CONTAINER_CONFIG_ERROR = "ContainerConfigError"
POD_CREATION_FAILED = "PodCreationFailed"
POD_FAILED = "PodFailed"
JOB_FAILED = "JobFailed"
JOB_DELETED = "JobDeleted"
TIMEOUT = "Timeout"
RUN_TERMINATED = "RunTerminated"
WORKSPACE_LIMIT = "WorkspaceLimit"
"""A Task of a run worker waits for a ``maxConcurrentTasks`` slot."""
ADMISSION_PENDING = "AdmissionPending"
"""The agent Job waits, suspended, for Kueue to admit it (WorkspaceConfig ``queueName``)."""
ADMITTED = "Admitted"
"""Kueue admitted the agent Job: its pod may start."""
EVICTED = "Evicted"
"""Kueue suspended a running agent Job again (preemption, a quota change): it waits for admission anew."""
WAITING_FOR_TURN = "WaitingForTurn"
"""A BatchRun's Task waits for a place within the BatchRun's parallelism."""
RETRYING = "Retrying"
COMPLETED = "Completed"
RATE_LIMITED = "RateLimited"
"""Queued: the agent stopped on its provider's rate limit (exit 75), or another Task of its WorkspaceConfig did;
the Task starts again when the limit resets, without using up an attempt."""
BUDGET_EXHAUSTED = "BudgetExhausted"
"""Queued: the WorkspaceConfig's budget for the current period is spent; the Task starts in the next period."""
QUOTA_EXHAUSTED = "QuotaExhausted"
"""Queued: the WorkspaceConfig's quota of Task starts in its window is used up; the Task starts when a start leaves it."""
RATE_LIMIT_WAIT_EXCEEDED = "RateLimitWaitExceeded"
"""The provider's rate limit resets later than the WorkspaceConfig's maxRateLimitWait."""
BUDGET_EXCEEDED = "BudgetExceeded"
"""The BatchRun's budget is spent: its Task did not start (and the BatchRun ends Stopped for it)."""

# The run (written by the bridge on Tasks and BatchRuns).
RUN_SUBMITTED = "RunSubmitted"
WORKSPACE_CONCURRENCY_LIMIT = "WorkspaceConcurrencyLimit"
"""A standalone Task waits as Queued for its WorkspaceConfig's ``maxConcurrentTasks``."""
DAGSTER_UNAVAILABLE = "DagsterUnavailable"
RUN_SUBMISSION_FAILED = "RunSubmissionFailed"
NAMESPACE_NOT_ENABLED = "NamespaceNotEnabled"
"""The run worker has no rights in the object's namespace (deploy/tenant was not applied there)."""
STOP_REQUESTED = "StopRequested"
RUN_FAILED = "RunFailed"
RUN_CANCELED = "RunCanceled"
RUN_ENDED_WITHOUT_STATUS = "RunEndedWithoutStatus"
RUN_NOT_FOUND = "RunNotFound"
RUN_NOT_OWNED = "RunNotOwned"
"""The run a status names belongs to another object: the bridge refuses to terminate or re-execute it."""
RUN_ADOPTED = "RunAdopted"
RUN_ENDED = "RunEnded"
"""On a BatchRun's Task that its run never finished."""

# BatchRuns only.
ALL_TASKS_COMPLETED = "AllTasksCompleted"
TASKS_FAILED = "TasksFailed"
RERUN_STARTED = "RerunStarted"
NOTHING_TO_RERUN = "NothingToRerun"
RERUN_REFUSED = "RerunRefused"
PAUSED = "Paused"
RESUMED = "Resumed"


# --- parsers: one per annotation, used by the bridge and the ops alike ---------------------------------


def _flag(annotations: Mapping[str, Any] | None, name: str) -> bool:
    # Kubernetes users write "true", "True" and " true"; all of them mean yes.
    return str((annotations or {}).get(name, "")).strip().lower() == "true"


def stop_requested(annotations: Mapping[str, Any] | None) -> bool:
    """``kubetask.io/stop`` is set to true (any case, surrounding blanks ignored)."""
    return _flag(annotations, STOP)


def pause_requested(annotations: Mapping[str, Any] | None) -> bool:
    """``kubetask.io/pause`` is set to true (any case, surrounding blanks ignored)."""
    return _flag(annotations, PAUSE)


def rerun_request(annotations: Mapping[str, Any] | None) -> str | None:
    """The stripped value of ``kubetask.io/rerun`` (None when absent); only ``"failed"`` is valid."""
    value = (annotations or {}).get(RERUN)
    return None if value is None else str(value).strip()
