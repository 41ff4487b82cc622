"""The kubetask.io/v1alpha1 API: pydantic models of Task, WorkspaceConfig, Batch and BatchRun.

These models are the single source of truth: the CRDs in ``crds/`` are generated from them.
"""

from kubetask.api.base import API_VERSION, GROUP, VERSION, Condition, ObjectMeta, OwnerReference, parse_duration
from kubetask.api.batch import (
    Batch,
    BatchRun,
    BatchRunPhase,
    BatchRunSpec,
    BatchRunStatus,
    BatchSchedule,
    BatchSpec,
    BatchStatus,
    BatchTemplate,
    ConcurrencyPolicy,
    FailedTask,
    Progress,
)
from kubetask.api.contexts import (
    Context,
    ContextType,
    FileContext,
    FileSource,
    GitContext,
    KeyRef,
    RemoteFileContext,
    RepositoryContext,
)
from kubetask.api.task import Backoff, RetryPolicy, Task, TaskPhase, TaskSpec, TaskStatus
from kubetask.api.workspace import Credential, PodScheduling, RepositorySettings, WorkspaceConfig, WorkspaceConfigSpec

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "parse_duration",
    "Condition",
    "ObjectMeta",
    "OwnerReference",
    "Context",
    "ContextType",
    "FileContext",
    "FileSource",
    "GitContext",
    "KeyRef",
    "RemoteFileContext",
    "RepositoryContext",
    "Task",
    "TaskSpec",
    "TaskStatus",
    "TaskPhase",
    "RetryPolicy",
    "Backoff",
    "WorkspaceConfig",
    "WorkspaceConfigSpec",
    "Credential",
    "RepositorySettings",
    "PodScheduling",
    "Batch",
    "BatchSpec",
    "BatchTemplate",
    "BatchSchedule",
    "BatchStatus",
    "ConcurrencyPolicy",
    "BatchRun",
    "BatchRunSpec",
    "BatchRunStatus",
    "BatchRunPhase",
    "Progress",
    "FailedTask",
]
