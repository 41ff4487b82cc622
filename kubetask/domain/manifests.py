"""Kubernetes manifests of one Task attempt as plain dicts: context ConfigMap and Secret, and the Job.

The Job keeps the original KubeTask's shape (container ``agent``, ``copy-tools``, credentials as env
and files, ``context-files`` mounts with ``subPath``) and adds what the original lacked: one Job per
attempt with ``backoffLimit: 0``, a deadline, a TTL, resources, security context, image pull secrets,
Secret-backed context files, Git checkouts, and labels/annotations leading back to the Task and the
Dagster run. Nothing here holds a secret value: Secrets are referenced, never copied, except the
context Secret, whose content is the sensitive context files themselves.

Credentials: a key with ``env`` is a ``secretKeyRef`` (an env-only credential without a key must be
bound to the Secret's only key first, ``credentials.bind_keys``); a key with ``mountPath`` is one file
by ``subPath``; a ``mountPath`` without a key mounts the whole Secret as a directory; neither ``env``
nor ``mountPath`` is ``envFrom``.

Git checkouts: the init container ``git-clone-<i>`` runs a fixed script that reads repository, ref
and depth from env vars, so no user string is ever parsed by the shell. HTTPS credentials reach git
through a credential helper reading ``GIT_USERNAME``/``GIT_PASSWORD`` (from the Secret's keys
``username``/``password``, both optional; a token alone in ``password`` works); the Secret's
``ca.crt``, when present, is the certificate authority git trusts for a private host. SSH uses the
Secret's ``ssh-privatekey`` and, when present, ``known_hosts`` (otherwise the host key is accepted on
first use). The checkout is a detached HEAD at ``ref`` (default: the remote's HEAD) in the volume's
``checkout`` directory, mounted by the agent at ``git.path``. The clone runs with the agent's
securityContext, so the files belong to the agent's user.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping, Sequence
from typing import Any

from kubetask import vocabulary
from kubetask.api import Credential, GitContext, OwnerReference, Task, WorkspaceConfigSpec
from kubetask.api.workspace import DEFAULT_AGENT_IMAGE, DEFAULT_SERVICE_ACCOUNT
from kubetask.domain.contexts import ContextFile
from kubetask.domain.errors import TaskError
from kubetask.domain.results import RESULT_FILE, RESULT_FILE_ENV
from kubetask.vocabulary import (
    APP,
    CONTEXT_TOO_LARGE,
    LABEL_APP,
    LABEL_ATTEMPT,
    LABEL_BATCH,
    LABEL_BATCH_RUN,
    LABEL_POOL,
    LABEL_TASK,
    MOUNT_PATH_CONFLICT,
    MOUNT_PATH_REFUSED,
)

DEFAULT_GIT_IMAGE = "alpine/git:2.47.2"
MAX_OBJECT_BYTES = 1_048_576
DEFAULT_CREDENTIAL_MODE = 0o600
CREDENTIAL_FILE = "secret-file"
CREDENTIAL_ENV_VAR = "KUBETASK_CREDENTIAL_ENV"
CREDENTIAL_PATHS_VAR = "KUBETASK_CREDENTIAL_PATHS"

TOOLS_PATH = "/tools"
# A mount here would replace the agent's programs or libraries, or the kernel's interfaces.
SYSTEM_DIRECTORIES = (
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/usr",
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/run",
    "/var/run",
)
COPY_TOOLS = "cp -R /tools/. /shared-tools/"
TOOLS_ENV = {
    "PATH": "/tools/bin:/usr/local/bin:/usr/bin:/bin",
    "NODE_PATH": "/tools/lib/node_modules",
    "LD_LIBRARY_PATH": "/tools/lib",
}
# Bounds on what the init containers write and use, so that a huge repository or tools image cannot fill
# the node's disk or memory: the kubelet evicts a pod whose emptyDir outgrows its sizeLimit.
GIT_VOLUME_SIZE_LIMIT = "4Gi"
TOOLS_VOLUME_SIZE_LIMIT = "1Gi"
INIT_CONTAINER_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"memory": "1Gi"},
}
"""An init container's resources when the WorkspaceConfig sets none (else it gets the agent's)."""
CONTEXT_VOLUME = "context-files"
CONTEXT_SECRET_VOLUME = "context-secret-files"
GIT_VOLUME_MOUNT = "/git"
GIT_CHECKOUT_DIR = "checkout"
GIT_SECRET_MOUNT = "/etc/kubetask-git"

# A git credential helper answering from the env (single-quoted in the script, so expanded by git's
# shell). Without a username a token alone works: the username defaults to `git`.
GIT_CREDENTIAL_HELPER = (
    '!f() { test "$1" = get && test -n "${GIT_PASSWORD:-}" || return 0; '
    'echo "username=${GIT_USERNAME:-git}"; echo "password=$GIT_PASSWORD"; }; f'
)
GIT_CLONE_SCRIPT = f"""\
set -eu
case "$GIT_REPOSITORY" in
  https://*|http://*|ssh://*|git@*) ;;
  *) echo "kubetask: repository must be an https://, http://, ssh:// or git@ URL" >&2; exit 2 ;;
esac
case "${{GIT_REF:-}}" in
  -*) echo "kubetask: ref must not start with '-'" >&2; exit 2 ;;
esac
if [ -f {GIT_SECRET_MOUNT}/ssh-privatekey ]; then
  cp {GIT_SECRET_MOUNT}/ssh-privatekey "$HOME/ssh-key"
  chmod 600 "$HOME/ssh-key"
  known_hosts={GIT_SECRET_MOUNT}/known_hosts
  check=yes
  if [ ! -f "$known_hosts" ]; then known_hosts="$HOME/known_hosts"; check=accept-new; fi
  export GIT_SSH_COMMAND="ssh -i $HOME/ssh-key -o IdentitiesOnly=yes -o UserKnownHostsFile=$known_hosts -o StrictHostKeyChecking=$check"
fi
if [ -n "${{GIT_CA_CERT:-}}" ]; then
  printf '%s\n' "$GIT_CA_CERT" > "$HOME/git-ca.crt"
  export GIT_SSL_CAINFO="$HOME/git-ca.crt"
fi
git init -q {GIT_VOLUME_MOUNT}/{GIT_CHECKOUT_DIR}
cd {GIT_VOLUME_MOUNT}/{GIT_CHECKOUT_DIR}
git remote add origin "$GIT_REPOSITORY"
if [ "$GIT_DEPTH" -gt 0 ]; then set -- --depth "$GIT_DEPTH"; else set --; fi
git -c credential.helper='{GIT_CREDENTIAL_HELPER}' fetch -q "$@" origin "${{GIT_REF:-HEAD}}"
git checkout -q FETCH_HEAD
"""


def config_map_name(task_name: str) -> str:
    return f"{task_name}-context"


def secret_name(task_name: str) -> str:
    return f"{task_name}-context-secret"


def job_name(task_name: str, attempt: int) -> str:
    """``<task>-job-<attempt>``; attempts count from 1."""
    if attempt < 1:
        raise ValueError(f"attempt must be at least 1, not {attempt}")
    return f"{task_name}-job-{attempt}"


def owner_reference(task: Task) -> dict[str, Any]:
    """The controller owner reference to the Task: deleting the Task deletes what it owns."""
    if not task.metadata.name or not task.metadata.uid:
        raise ValueError("the Task needs metadata.name and metadata.uid (read it from the API server)")
    return OwnerReference.controller_of("Task", task.metadata.name, task.metadata.uid)


OURS, PREDECESSOR, FOREIGN = "ours", "predecessor", "foreign"


def ownership(existing_owners: Sequence[Mapping[str, Any]] | None, ours: Mapping[str, Any]) -> str:
    """Whose an object is that a create found under our fixed name (409), from its ownerReferences:

    ``OURS`` (controlled by this Task: adopt or replace it), ``PREDECESSOR`` (controlled by a deleted
    Task of the same name, which garbage collection has not removed yet: replace it) or ``FOREIGN``
    (anything else: never touched, the Task fails with NameConflict)."""
    controller = next((o for o in existing_owners or [] if o.get("controller")), None)
    if (
        controller is None
        or controller.get("kind") != ours["kind"]
        or controller.get("apiVersion") != ours["apiVersion"]
    ):
        return FOREIGN
    if controller.get("uid") == ours["uid"]:
        return OURS
    return PREDECESSOR if controller.get("name") == ours["name"] else FOREIGN


def watch_selector(task: Task) -> str:
    """The label selector of the objects a run worker watches for this Task: its BatchRun's, else its
    pool's, else its own (the steps of one run share one watch)."""
    labels = task.metadata.labels or {}
    for shared in (LABEL_BATCH_RUN, LABEL_POOL):
        if labels.get(shared):
            return f"{shared}={labels[shared]}"
    return f"{LABEL_TASK}={_name(task)}"


def _base_labels(task: Task) -> dict[str, str]:
    return {LABEL_APP: APP, LABEL_TASK: _name(task)}


def _name(task: Task) -> str:
    return str(owner_reference(task)["name"])


def _namespace(task: Task) -> str:
    if not task.metadata.namespace:
        raise ValueError(f"Task {task.metadata.name!r} has no namespace")
    return task.metadata.namespace


def _metadata(
    task: Task, name: str, labels: dict[str, str], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": _namespace(task), "labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    metadata["ownerReferences"] = [owner_reference(task)]
    return metadata


# --- context ConfigMap and Secret --------------------------------------------------------------


def build_context_objects(
    task: Task, files: Sequence[ContextFile]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The ConfigMap of the plain context files and the Secret of the sensitive ones (None when empty).

    Raises ``TaskError(ContextTooLarge)`` when either would exceed 1 MiB (keys plus values).
    """
    plain = [f for f in files if not f.sensitive]
    sensitive = [f for f in files if f.sensitive]
    config_map = secret = None
    if plain:
        _check_size(plain, "ConfigMap")
        config_map = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata(task, config_map_name(_name(task)), _base_labels(task)),
            "data": {f.key: f.content for f in plain},
        }
    if sensitive:
        _check_size(sensitive, "Secret")
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": _metadata(task, secret_name(_name(task)), _base_labels(task)),
            "type": "Opaque",
            "data": {f.key: base64.b64encode(f.content.encode()).decode() for f in sensitive},
        }
    return config_map, secret


def _check_size(files: Sequence[ContextFile], kind: str) -> None:
    sizes = {f.file_path: len(f.key.encode()) + len(f.content.encode()) for f in files}
    total = sum(sizes.values())
    if total > MAX_OBJECT_BYTES:
        largest = sorted(sizes, key=lambda path: (-sizes[path], path))[:3]
        named = ", ".join(f"{path} ({_human(sizes[path])})" for path in largest)
        raise TaskError(
            CONTEXT_TOO_LARGE,
            f"context files total {_human(total)}, over the 1 MiB limit of a {kind}; largest: {named}",
        )


def _human(size: int) -> str:
    if size >= 1 << 20:
        return f"{size / (1 << 20):.1f} MiB"
    if size >= 1 << 10:
        return f"{size / (1 << 10):.1f} KiB"
    return f"{size} B"


# --- the Job -----------------------------------------------------------------------------------


def build_job(
    task: Task,
    workspace: WorkspaceConfigSpec,
    files: Sequence[ContextFile],
    git: Sequence[GitContext],
    *,
    attempt: int,
    dagster_run_id: str,
    timeout_seconds: int | None,
    git_image: str = DEFAULT_GIT_IMAGE,
    host_network: bool = False,
) -> dict[str, Any]:
    """The Job of one attempt of ``task``; raises ``TaskError(MountPathConflict)`` when two mounts share a
    path, ``TaskError(MountPathRefused)`` for a mount in a system directory or under /tools.

    Job and pod carry the labels ``app``, ``kubetask.io/task``, ``kubetask.io/attempt`` (and the Task's
    ``kubetask.io/batch``/``batch-run``/``pool`` labels), and the annotations of the Dagster run id and Task uid.
    ``host_network`` is the operator's choice (a single-node local cluster), never a tenant's.
    """
    _check_mount_paths(workspace, files, git)
    name = _name(task)
    inherited = {
        k: v for k, v in (task.metadata.labels or {}).items() if k in (LABEL_BATCH, LABEL_BATCH_RUN, LABEL_POOL)
    }
    labels = {**_base_labels(task), **inherited, LABEL_ATTEMPT: str(attempt)}
    annotations = {vocabulary.DAGSTER_RUN_ID: dagster_run_id, vocabulary.TASK_UID: owner_reference(task)["uid"]}
    # podLabels are merged over ours (as in the original), except the kubetask.io/ labels we select on.
    protected = {k: v for k, v in labels.items() if k.startswith(vocabulary.PROTECTED_LABEL_PREFIX)}
    pod_labels = {**labels, **(workspace.pod_labels or {}), **protected}
    job_labels = {**(workspace.job_labels or {}), **labels}
    if workspace.queue_name:
        job_labels[vocabulary.KUEUE_QUEUE_NAME] = workspace.queue_name
    job_annotations = {**(workspace.job_annotations or {}), **annotations}

    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    init_containers: list[dict[str, Any]] = []
    env: list[dict[str, Any]] = [
        {"name": "TASK_NAME", "value": name},
        {"name": "TASK_NAMESPACE", "value": _namespace(task)},
        {"name": RESULT_FILE_ENV, "value": RESULT_FILE},
    ]

    for index, repo in enumerate(git):
        volume = f"git-{index}"
        volumes.append({"name": volume, "emptyDir": {"sizeLimit": GIT_VOLUME_SIZE_LIMIT}})
        mounts.append({"name": volume, "mountPath": repo.path, "subPath": GIT_CHECKOUT_DIR})
        init_containers.append(_git_clone_container(index, repo, git_image, workspace, volumes))

    if workspace.tools_image:
        volumes.append({"name": "tools-volume", "emptyDir": {"sizeLimit": TOOLS_VOLUME_SIZE_LIMIT}})
        mounts.append({"name": "tools-volume", "mountPath": TOOLS_PATH})
        copy_tools: dict[str, Any] = {
            "name": "copy-tools",
            "image": workspace.tools_image,
            # -R, not the original's -a: a non-root copier cannot set the times of the volume's root
            "command": ["sh", "-c", COPY_TOOLS],
            "volumeMounts": [{"name": "tools-volume", "mountPath": "/shared-tools"}],
        }
        if workspace.security_context:  # as the agent's user, like the clone: the agent owns its tools
            copy_tools["securityContext"] = workspace.security_context
        init_containers.append(copy_tools)
        env += [{"name": key, "value": value} for key, value in TOOLS_ENV.items()]

    env_from: list[dict[str, Any]] = []
    credential_paths: list[str] = []
    for index, credential in enumerate(workspace.credentials or []):
        volume = f"credential-{index}"
        if credential.env is None and credential.mount_path is None:
            env_from.append({"secretRef": {"name": credential.secret_ref.name}})
        if credential.env is not None:
            env.append({"name": credential.env, "valueFrom": {"secretKeyRef": _credential_key(credential)}})
        if credential.mount_path is not None:
            credential_paths.append(credential.mount_path)
            volumes.append({"name": volume, "secret": _credential_volume(credential)})
            mount: dict[str, Any] = {"name": volume, "mountPath": credential.mount_path, "readOnly": True}
            if credential.secret_ref.key is not None:
                mount["subPath"] = CREDENTIAL_FILE
            mounts.append(mount)

    # Where the credentials are, never what: an agent (the echo agent) can check they arrived.
    credential_env = [c.env for c in workspace.credentials or [] if c.env is not None]
    for name_var, values in ((CREDENTIAL_ENV_VAR, credential_env), (CREDENTIAL_PATHS_VAR, credential_paths)):
        if values:
            env.append({"name": name_var, "value": ",".join(values)})

    for volume, source, sensitive in (
        (CONTEXT_VOLUME, {"configMap": {"name": config_map_name(name)}}, False),
        (CONTEXT_SECRET_VOLUME, {"secret": {"secretName": secret_name(name)}}, True),
    ):
        chosen = [f for f in files if f.sensitive == sensitive]
        if chosen:
            volumes.append({"name": volume, **source})
            mounts += [{"name": volume, "mountPath": f.file_path, "subPath": f.key, "readOnly": True} for f in chosen]

    agent: dict[str, Any] = {
        "name": "agent",
        "image": workspace.agent_image or DEFAULT_AGENT_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        **({"envFrom": env_from} if env_from else {}),
        # Sorted by path: deterministic, and a directory (a checkout) is mounted before files inside it.
        "volumeMounts": sorted(mounts, key=lambda m: m["mountPath"]),
        # The agent's result (kubetask.domain.results) comes back with the container status.
        "terminationMessagePath": RESULT_FILE,
        "terminationMessagePolicy": "File",
    }
    if workspace.resources:
        agent["resources"] = workspace.resources
    if workspace.security_context:
        agent["securityContext"] = workspace.security_context

    pod_spec: dict[str, Any] = {
        "serviceAccountName": workspace.service_account_name or DEFAULT_SERVICE_ACCOUNT,
        "automountServiceAccountToken": bool(workspace.automount_service_account_token),
        "restartPolicy": "Never",
    }
    if host_network:
        pod_spec["hostNetwork"] = True
    # Secret volumes are root's: with the agent's group as fsGroup, a non-root agent can read its
    # credential files (kubelet makes a 0600 file 0640, group-owned) and write its checkouts.
    run_as_group = (workspace.security_context or {}).get("runAsGroup")
    if isinstance(run_as_group, int):
        pod_spec["securityContext"] = {"fsGroup": run_as_group}
    if init_containers:
        for container in init_containers:
            container["resources"] = workspace.resources or INIT_CONTAINER_RESOURCES
        pod_spec["initContainers"] = init_containers
    pod_spec["containers"] = [agent]
    if volumes:
        pod_spec["volumes"] = volumes
    if workspace.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [ref.to_k8s() for ref in workspace.image_pull_secrets]
    scheduling = workspace.scheduling
    if scheduling is not None:
        for field, value in (
            ("nodeSelector", scheduling.node_selector),
            ("tolerations", scheduling.tolerations),
            ("affinity", scheduling.affinity),
        ):
            if value:
                pod_spec[field] = value

    if workspace.priority_class_name:
        pod_spec["priorityClassName"] = workspace.priority_class_name
    if workspace.runtime_class_name:
        pod_spec["runtimeClassName"] = workspace.runtime_class_name

    spec: dict[str, Any] = {"backoffLimit": 0}
    if workspace.queue_name:
        spec["suspend"] = True  # Kueue admits it (it resets the Job's startTime: the deadline counts from then)
        if workspace.max_concurrent_tasks:  # the slot is taken at admission; the pod waits for it behind a gate
            pod_spec["schedulingGates"] = [{"name": vocabulary.SLOT_GATE}]
    if timeout_seconds is not None:
        spec["activeDeadlineSeconds"] = timeout_seconds
    if task.spec.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = task.spec.ttl_seconds_after_finished
    spec["template"] = {"metadata": {"labels": pod_labels, "annotations": dict(annotations)}, "spec": pod_spec}
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(task, job_name(name, attempt), job_labels, job_annotations),
        "spec": spec,
    }
    return copy.deepcopy(job)  # shares nothing with the models (resources, scheduling...)


def _credential_key(credential: Credential) -> dict[str, str]:
    if credential.secret_ref.key is None:
        raise ValueError(f'credential "{credential.display_name}": bind its key first (credentials.bind_keys)')
    return {"name": credential.secret_ref.name, "key": credential.secret_ref.key}


def _credential_volume(credential: Credential) -> dict[str, Any]:
    """The key as the file ``secret-file``, or without a key every key of the Secret as a file."""
    mode = DEFAULT_CREDENTIAL_MODE if credential.file_mode is None else credential.file_mode
    source: dict[str, Any] = {"secretName": credential.secret_ref.name}
    if credential.secret_ref.key is not None:
        source["items"] = [{"key": credential.secret_ref.key, "path": CREDENTIAL_FILE, "mode": mode}]
    source["defaultMode"] = mode
    return source


def _git_clone_container(
    index: int, repo: GitContext, image: str, workspace: WorkspaceConfigSpec, volumes: list[dict[str, Any]]
) -> dict[str, Any]:
    """Init container cloning ``repo`` into volume ``git-<index>``; adds its Secret volume to ``volumes``."""
    env: list[dict[str, Any]] = [
        {"name": "GIT_REPOSITORY", "value": repo.repository},
        {"name": "GIT_DEPTH", "value": str(1 if repo.depth is None else repo.depth)},
        {"name": "GIT_ALLOW_PROTOCOL", "value": "http:https:ssh"},
        {"name": "GIT_TERMINAL_PROMPT", "value": "0"},
        {"name": "HOME", "value": "/tmp"},
    ]
    if repo.ref:
        env.append({"name": "GIT_REF", "value": repo.ref})
    mounts: list[dict[str, Any]] = [{"name": f"git-{index}", "mountPath": GIT_VOLUME_MOUNT}]
    if repo.secret_ref is not None:
        secret = repo.secret_ref.name
        if repo.repository.startswith(("ssh://", "git@")):
            volume = f"git-{index}-secret"
            # Readable by any user, in this container only: the script copies the key to a 0600 file.
            volumes.append({"name": volume, "secret": {"secretName": secret, "defaultMode": 0o444, "optional": True}})
            mounts.append({"name": volume, "mountPath": GIT_SECRET_MOUNT, "readOnly": True})
        else:
            env += [
                {"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
                for var, key in (("GIT_USERNAME", "username"), ("GIT_PASSWORD", "password"), ("GIT_CA_CERT", "ca.crt"))
            ]
    container: dict[str, Any] = {
        "name": f"git-clone-{index}",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", GIT_CLONE_SCRIPT],
        "env": env,
        "volumeMounts": mounts,
    }
    if workspace.security_context:
        container["securityContext"] = workspace.security_context
    return container


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _check_mount_paths(workspace: WorkspaceConfigSpec, files: Sequence[ContextFile], git: Sequence[GitContext]) -> None:
    inputs: list[tuple[str, str]] = [(f.file_path, "context file") for f in files]
    inputs += [(g.path, f"Git checkout #{i}") for i, g in enumerate(git)]
    credentials = [
        (c.mount_path, f'credential "{c.display_name}"') for c in workspace.credentials or [] if c.mount_path
    ]
    claims = inputs + credentials
    allowed = workspace.allowed_path_prefixes
    for path, what in inputs:
        if allowed is not None and not any(_under(path, prefix) for prefix in allowed):
            raise TaskError(
                MOUNT_PATH_REFUSED,
                f"{what} at {path} is refused: the WorkspaceConfig's allowedPathPrefixes are {', '.join(allowed)}",
            )
    # A credential nested with another mount could end up in a checkout the agent commits and pushes, or
    # be shadowed by a context file: credentials stand alone.
    for path, what in credentials:
        nested = next((w for p, w in claims if p != path and (_under(p, path) or _under(path, p))), None)
        if nested is not None:
            raise TaskError(
                MOUNT_PATH_CONFLICT,
                f"{what} at {path} and {nested} are mounted one inside the other: a credential gets a path of its own",
            )
    for path, what in claims:
        refused = next((d for d in SYSTEM_DIRECTORIES if _under(path, d)), None)
        if path.startswith(TOOLS_PATH + "/"):  # /tools itself is toolsImage's: a conflict, below
            refused = TOOLS_PATH
        if refused is not None:
            raise TaskError(
                MOUNT_PATH_REFUSED,
                f"{what} at {path} is refused: nothing is mounted in {refused}, where it could replace the "
                "agent's programs, libraries or tools (use /workspace, /home or /tmp)",
            )
    if workspace.tools_image:
        claims.append((TOOLS_PATH, "tools (toolsImage)"))
    seen: dict[str, str] = {}
    for path, what in claims:
        if path in seen:
            raise TaskError(MOUNT_PATH_CONFLICT, f"{seen[path]} and {what} are both mounted at {path}")
        seen[path] = what
