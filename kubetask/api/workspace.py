"""WorkspaceConfig: the HOW shared by Tasks (agent image, tools, credentials, pod settings)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from kubetask.api.base import ApiModel, Duration, LocalObjectReference, ObjectMeta, cel, k8s_extra
from kubetask.api.contexts import ContextList, FilePath

DEFAULT_AGENT_IMAGE = "quay.io/zhaoxue/kubetask-agent-gemini:latest"
DEFAULT_WORKSPACE_CONFIG = "default"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

_ANY_OBJECT = k8s_extra(preserve_unknown=True)


class CredentialSecretRef(ApiModel):
    name: str = Field(description="Secret name in the Task's namespace.", min_length=1, max_length=253)
    key: str = Field(description="Key within the Secret.", min_length=1, max_length=253)


class Credential(ApiModel):
    """A Secret key given to the agent as an env var, a file, or both. The value never enters the Job spec."""

    name: str = Field(description="Descriptive name.", min_length=1, max_length=253)
    secret_ref: CredentialSecretRef = Field(description="The Secret key holding the credential.")
    env: str | None = Field(
        None,
        description="Env var that receives the value (through secretKeyRef).",
        max_length=256,
        json_schema_extra=k8s_extra(
            cel(f"self.matches(r'{ENV_NAME_PATTERN}')", "{field} must be a valid env var name")
        ),
    )
    mount_path: FilePath | None = Field(None, description="Absolute file path the value is mounted at.")
    file_mode: int | None = Field(
        None, description="File permission bits of the mounted file (default 0600, i.e. 384).", ge=0, le=511
    )


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
    scheduling: PodScheduling | None = Field(
        None, description="nodeSelector, tolerations and affinity of the agent pod."
    )
    service_account_name: str = Field(
        description="ServiceAccount the agent pod runs as (must exist in the namespace).", min_length=1, max_length=253
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


class WorkspaceConfig(ApiModel):
    """WorkspaceConfig (kubetask.io/v1alpha1)."""

    api_version: str = "kubetask.io/v1alpha1"
    kind: str = "WorkspaceConfig"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: WorkspaceConfigSpec
