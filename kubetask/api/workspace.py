"""WorkspaceConfig: the HOW shared by Tasks (agent image, tools, credentials, pod settings)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema, model_validator

from kubetask.api.base import GROUP, ApiModel, Duration, LocalObjectReference, ObjectMeta, ObjectName, cel, k8s_extra
from kubetask.api.contexts import NORMALISED_PATH_PATTERN, ContextList, FilePath, LocalSecretRef
from kubetask.api.result import PeriodBudget, PeriodSpend

DEFAULT_AGENT_IMAGE = "quay.io/zhaoxue/kubetask-agent-gemini:latest"
DEFAULT_WORKSPACE_CONFIG = "default"
MAX_QUOTA_STARTS = 1000  # status.recentStarts holds one time per start in the window
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
HOST_PATTERN = r"^(\*\.)?([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""A lowercase host name, or ``*.`` and one (every host below it, not the name itself)."""
DEFAULT_SERVICE_ACCOUNT = "default"
DEFAULT_REPOSITORY_BASE_URL = "https://github.com"
# https: no user info (a token in a URL ends up in logs and the Job spec); ssh: a user is how ssh works.
REPOSITORY_BASE_URL_PATTERN = r"^(https://[^/@?# ]+|ssh://([^/@?# ]+@)?[^/@?# ]+)(/[^?# ]*)?$"

_ANY_OBJECT = k8s_extra(preserve_unknown=True)


def _env_name(value: object) -> object:
    """``env`` as the design document writes it (``{name: X}``) or as a plain string."""
    if isinstance(value, dict) and set(value) == {"name"}:
        return value["name"]
    return value


def _env_name_valid(text: str) -> str:
    if not re.fullmatch(ENV_NAME_PATTERN, text):
        raise ValueError(f"{text!r} is not an env var name (letters, digits and _, not starting with a digit)")
    return text


# A string or {name: <string>}: CEL cannot see a field of two types, so the structural schema leaves
# it untyped and tells the two apart with OpenAPI junctors (a string has no properties; an object no
# length), which name the field when they refuse a value.
_ENV_SCHEMA = {
    "description": "Env var that receives the value: a name, or {name: NAME}.",
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {"name": {"type": "string", "description": "Env var name."}},
    "oneOf": [
        {"pattern": ENV_NAME_PATTERN, "not": {"maxLength": 0}},
        {
            "required": ["name"],
            "maxProperties": 1,
            "properties": {"name": {"pattern": ENV_NAME_PATTERN}},
            "not": {"maxProperties": 0},
        },
    ],
}
EnvName = Annotated[str, BeforeValidator(_env_name), AfterValidator(_env_name_valid), WithJsonSchema(_ENV_SCHEMA)]


class CredentialSecretRef(ApiModel):
    name: str = Field(description="Secret name in the Task's namespace.", min_length=1, max_length=253)
    key: str | None = Field(
        None,
        description="Key within the Secret; a credential with a key sets env, mountPath or both. Without it: "
        "with `env`, the Secret's only key; with `mountPath`, the whole Secret as a directory; with neither, "
        "every key as an env var (envFrom).",
        min_length=1,
        max_length=253,
    )


class Credential(ApiModel):
    """A Secret (or one of its keys) given to the agent as env vars or files. No value enters the Job spec."""

    # CEL cannot see `env` (it has two types), so the API server refuses a key without env or
    # mountPath with an OpenAPI junctor; its message names the credential, not the rule.
    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "not": {
                "properties": {"secretRef": {"required": ["key"]}},
                "not": {"anyOf": [{"required": ["env"]}, {"required": ["mountPath"]}]},
            }
        }
    }

    name: str | None = Field(
        None, description="Descriptive name (default: the Secret's name).", min_length=1, max_length=253
    )
    secret_ref: CredentialSecretRef = Field(description="The Secret, or the Secret key, holding the credential.")
    env: EnvName | None = None
    mount_path: FilePath | None = Field(
        None, description="Absolute path: the key's file, or without secretRef.key the Secret's directory."
    )
    file_mode: int | None = Field(
        None, description="Permission bits of the mounted file(s) (default 0600, i.e. 384).", ge=0, le=511
    )

    @model_validator(mode="after")
    def _key_has_a_target(self) -> Credential:
        if self.secret_ref.key is not None and self.env is None and self.mount_path is None:
            raise ValueError("a credential with secretRef.key needs env or mountPath")
        return self

    @property
    def display_name(self) -> str:
        return self.name or self.secret_ref.name


class RepositorySettings(ApiModel):
    """Where Repository contexts are cloned from, and with which credentials."""

    base_url: str | None = Field(
        None,
        alias="baseURL",
        description=f"https:// or ssh:// URL that `/<org>/<repo>.git` is appended to (default `{DEFAULT_REPOSITORY_BASE_URL}`).",
        max_length=1024,
        json_schema_extra=k8s_extra(
            cel(
                f"self.matches(r'{REPOSITORY_BASE_URL_PATTERN}')",
                "{field} must be an https://host[/path] URL without user info, or an ssh://[user@]host[:port][/path] "
                "URL; no query or fragment",
            )
        ),
    )
    secret_ref: LocalSecretRef | None = Field(
        None,
        description="Secret with the clone credentials, as a Git context's secretRef: `username` and `password` "
        "(HTTPS; a token alone in `password` works; `ca.crt` is the certificate authority of a private host) or "
        "`ssh-privatekey` and optionally `known_hosts` (SSH).",
    )

    @model_validator(mode="after")
    def _https_or_ssh(self) -> RepositorySettings:
        if self.base_url is not None and not re.fullmatch(REPOSITORY_BASE_URL_PATTERN, self.base_url):
            raise ValueError(
                "baseURL must be an https:// URL without user info or an ssh:// URL, with no query or fragment"
            )
        return self

    def clone_url(self, org: str, repo: str) -> str:
        return f"{(self.base_url or DEFAULT_REPOSITORY_BASE_URL).rstrip('/')}/{org}/{repo}.git"


RESERVED_LABEL_PREFIXES = (f"{GROUP}/", "kueue.x-k8s.io/queue-name")
_RESERVED_KEYS_RULE = cel(
    "self.all(k, !k.startsWith('kubetask.io/') && k != 'kueue.x-k8s.io/queue-name')",
    "kubetask.io/ keys and kueue.x-k8s.io/queue-name are set by kubetask (use queueName for the queue)",
)


def _not_reserved(values: dict[str, str]) -> dict[str, str]:
    reserved = sorted(k for k in values if k.startswith(RESERVED_LABEL_PREFIXES))
    if reserved:
        raise ValueError(f"{', '.join(reserved)}: kubetask.io/ keys and kueue.x-k8s.io/queue-name are set by kubetask")
    return values


class PodScheduling(ApiModel):
    """Where agent pods may run; each field is copied to the pod spec as-is."""

    node_selector: dict[str, str] | None = Field(None, description="Pod nodeSelector.")
    tolerations: list[dict[str, Any]] | None = Field(
        None, description="Pod tolerations (core/v1 Toleration).", json_schema_extra={"items": _ANY_OBJECT}
    )
    affinity: dict[str, Any] | None = Field(
        None, description="Pod affinity (core/v1 Affinity).", json_schema_extra=_ANY_OBJECT
    )


class WorkspaceConfigSpec(ApiModel):
    """How Tasks run: agent image, tools, credentials, default contexts and pod settings."""

    agent_image: str | None = Field(
        None, description=f"Image of the `agent` container (default {DEFAULT_AGENT_IMAGE}).", max_length=1024
    )
    tools_image: str | None = Field(
        None,
        description="Image whose /tools is copied into the agent by an init container; PATH gets /tools/bin.",
        max_length=1024,
    )
    default_contexts: ContextList | None = Field(None, description="Contexts put before every Task's own contexts.")
    credentials: list[Credential] | None = Field(
        None, description="Secrets given to the agent as env vars or files.", max_length=64
    )
    pod_labels: dict[str, str] | None = Field(None, description="Labels added to the agent pod.")
    job_labels: Annotated[dict[str, str], AfterValidator(_not_reserved)] | None = Field(
        None,
        description="Labels added to each agent Job (kubetask.io/ keys and Kueue's queue-name label are the "
        "project's: set queueName for the latter).",
        max_length=64,
        json_schema_extra=k8s_extra(_RESERVED_KEYS_RULE),
    )
    job_annotations: Annotated[dict[str, str], AfterValidator(_not_reserved)] | None = Field(
        None,
        description="Annotations added to each agent Job (kubetask.io/ keys are the project's).",
        max_length=64,
        json_schema_extra=k8s_extra(_RESERVED_KEYS_RULE),
    )
    priority_class_name: str | None = Field(
        None,
        description="priorityClassName of the agent pod (Kueue reads it as the workload's priority).",
        max_length=253,
    )
    runtime_class_name: str | None = Field(
        None,
        description="runtimeClassName of the agent pod: a sandboxing runtime such as gVisor or Kata for agents "
        "that run code a model chose.",
        max_length=253,
    )
    queue_name: ObjectName | None = Field(
        None,
        description="Kueue LocalQueue of the agent Jobs: each Job is labelled kueue.x-k8s.io/queue-name and created "
        "suspended. Until Kueue admits it the Task is Queued with reason AdmissionPending; its timeout counts from "
        "admission; a Job Kueue evicts goes back to AdmissionPending (an Evicted Event) without spending an attempt.",
    )
    scheduling: PodScheduling | None = Field(
        None, description="nodeSelector, tolerations and affinity of the agent pod."
    )
    service_account_name: str | None = Field(
        None,
        description=f"ServiceAccount the agent pod runs as (must exist in the namespace; default `{DEFAULT_SERVICE_ACCOUNT}`).",
        min_length=1,
        max_length=253,
    )
    automount_service_account_token: bool | None = Field(
        None,
        description="Mount the ServiceAccount's API token into the agent pod (default false: the agent, which "
        "runs code a model chose, gets no Kubernetes credentials unless this says so).",
    )
    repositories: RepositorySettings | None = Field(
        None,
        description="Git host and clone credentials of Repository contexts (default: https://github.com, anonymous).",
    )
    allowed_path_prefixes: list[Annotated[str, Field(pattern=NORMALISED_PATH_PATTERN, max_length=1024)]] | None = Field(
        None,
        description="Directories the Tasks' context files and Git checkouts must be in (e.g. `/workspace`); a "
        "path elsewhere fails the Task with MountPathRefused. Unset: anywhere but the system directories.",
        max_length=16,
    )
    secret_header_hosts: list[Annotated[str, Field(pattern=HOST_PATTERN, max_length=253)]] | None = Field(
        None,
        description="Hosts a RemoteFile header taken from a Secret may be sent to (`api.example.com`, or "
        "`*.example.com` for the hosts below it). When set, a RemoteFile whose URL names another host fails with "
        "RemoteFileRefused before anything is sent; unset, any host.",
        max_length=64,
    )
    resources: dict[str, Any] | None = Field(
        None,
        description="Resources of the agent container (core/v1 ResourceRequirements).",
        json_schema_extra=_ANY_OBJECT,
    )
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        None, description="Secrets for pulling the images.", max_length=32
    )
    security_context: dict[str, Any] | None = Field(
        None,
        description="Security context of the agent container (core/v1 SecurityContext).",
        json_schema_extra=_ANY_OBJECT,
    )
    default_timeout: Duration | None = Field(None, description="Timeout of Tasks that set none (e.g. 30m).")
    max_concurrent_tasks: int | None = Field(
        None,
        description="At most this many Tasks using this WorkspaceConfig run at once; others wait as Queued.",
        ge=1,
        le=100000,
    )
    quota: StartQuota | None = Field(
        None,
        description="A cap on how fast its Tasks start: attempts beyond it wait as Queued (reason QuotaExhausted) "
        "until an earlier start leaves the window. The starts are recorded in status.recentStarts.",
    )
    budget: PeriodBudget | None = Field(
        None,
        description="What its agents may spend per period, summed from the usage their results report: once "
        "spent, its Tasks wait as Queued (reason BudgetExhausted) until the next period (status.spend).",
    )
    max_rate_limit_wait: Duration | None = Field(
        None,
        description="The longest a Task waits for a provider's rate limit to reset (default 1h). An agent that "
        "exits with code 75 and a rateLimitedUntil in its result has not used up an attempt: its Task waits as "
        "Queued (reason RateLimited) and starts again at that time, and no Task of this WorkspaceConfig starts "
        "before it. A reset further away fails the Task with reason RateLimitWaitExceeded.",
    )


class StartQuota(ApiModel):
    """At most ``maxTaskStarts`` agent Jobs of this WorkspaceConfig start in any ``window`` (a sliding window)."""

    max_task_starts: int = Field(
        description="Agent Jobs (attempts) that may start in one window.", ge=1, le=MAX_QUOTA_STARTS
    )
    window: Duration = Field(description="The sliding window, e.g. 1m or 1h.")


class WorkspaceConfigStatus(ApiModel):
    """What the bridge and the run workers observed about the Tasks of a WorkspaceConfig."""

    running: int | None = Field(None, description="Its Tasks running now (counted by the bridge).", ge=0)
    queued: int | None = Field(
        None,
        description="Its Tasks waiting to start now, phase Queued: for a slot of maxConcurrentTasks, a rate "
        "limit, the quota or the budget (counted by the bridge).",
        ge=0,
    )

    rate_limited_until: datetime | None = Field(
        None,
        description="Until when its credential is rate-limited (the latest reset an agent reported): no Task "
        "of it starts before.",
    )
    spend: PeriodSpend | None = Field(
        None, description="What its agents reported spending in the budget's current period."
    )
    recent_starts: list[datetime] | None = Field(
        None,
        description="When its agent Jobs started within the quota's window (claimed by the run workers with "
        "optimistic concurrency before each start).",
        max_length=MAX_QUOTA_STARTS,
    )


class WorkspaceConfig(ApiModel):
    """WorkspaceConfig (kubetask.io/v1alpha1)."""

    api_version: str = "kubetask.io/v1alpha1"
    kind: str = "WorkspaceConfig"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: WorkspaceConfigSpec
    status: WorkspaceConfigStatus | None = None
