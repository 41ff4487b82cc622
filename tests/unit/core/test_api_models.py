"""The pydantic models: the original KubeTask YAML round-trips, new fields validate, bad input is refused."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from kubetask.api import (
    Batch,
    BatchRun,
    Context,
    ContextType,
    RepositorySettings,
    Task,
    TaskPhase,
    WorkspaceConfig,
    WorkspaceConfigSpec,
    parse_duration,
)
from kubetask.api.cron import is_valid_cron, to_five_fields

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
MODELS = {"Task": Task, "WorkspaceConfig": WorkspaceConfig, "Batch": Batch, "BatchRun": BatchRun}


def _kubetask_documents(path: Path):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["apiVersion"].startswith("kubetask.io/"):
            yield doc


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_round_trips(path):
    for doc in _kubetask_documents(path):
        model = MODELS[doc["kind"]].model_validate(doc)
        assert model.to_k8s() == _plain_env(doc), f"{path.name}: {doc['kind']} changed in a round trip"


def _plain_env(doc: dict) -> dict:
    """The document with ``env: {name: X}`` (the design document's shorthand) written ``env: X``, as the models write it."""
    for credential in doc.get("spec", {}).get("credentials") or []:
        if isinstance(credential.get("env"), dict):
            credential["env"] = credential["env"]["name"]
    return doc


ORIGINAL = """
apiVersion: kubetask.io/v1alpha1
kind: WorkspaceConfig
metadata: {name: default, namespace: team-a}
spec:
  agentImage: quay.io/example/agent:v1
  serviceAccountName: kubetask-agent
  credentials:
    - name: gh
      secretRef: {name: github-token, key: token}
      env: GITHUB_TOKEN
  scheduling: {nodeSelector: {workload-type: ai-agent}}
---
apiVersion: kubetask.io/v1alpha1
kind: Batch
metadata: {name: update-deps, namespace: team-a}
spec:
  commonContext:
    - type: File
      file: {filePath: /workspace/task.md, source: {inline: "Update dependencies."}}
  variableContexts:
    - - type: File
        file: {filePath: /workspace/task.md, source: {configMapKeyRef: {name: repos, key: service-a.md}}}
    - - type: File
        file: {filePath: /workspace/task.md, source: {configMapKeyRef: {name: repos, key: service-b.md}}}
---
apiVersion: kubetask.io/v1alpha1
kind: BatchRun
metadata: {name: update-deps-001, namespace: team-a}
spec: {batchRef: update-deps}
"""


def test_the_original_example_round_trips_and_keeps_its_meaning():
    ws, batch, run = (MODELS[d["kind"]].model_validate(d) for d in yaml.safe_load_all(ORIGINAL))
    assert ws.spec.credentials[0].env == "GITHUB_TOKEN"
    assert ws.spec.scheduling.node_selector == {"workload-type": "ai-agent"}
    assert len(batch.spec.variable_contexts) == 2
    assert batch.spec.variable_contexts[1][0].file.source.config_map_key_ref.key == "service-b.md"
    assert run.spec.batch_ref == "update-deps" and run.spec.batch_spec is None
    for model, doc in zip((ws, batch, run), yaml.safe_load_all(ORIGINAL), strict=True):
        assert model.to_k8s() == doc


def test_defaults_are_unset_not_invented():
    task = Task.model_validate(
        {"metadata": {"name": "t"}, "spec": {"contexts": [{"type": "File", "file": {"filePath": "/a", "source": {"inline": "x"}}}]}}
    )
    assert task.api_version == "kubetask.io/v1alpha1" and task.kind == "Task"
    assert task.spec.workspace_config_ref is None and task.spec.retries is None and task.status is None
    assert task.spec.contexts[0].type is ContextType.FILE and task.spec.contexts[0].file_path == "/a"
    assert TaskPhase.STOPPED.terminal and not TaskPhase.QUEUED.terminal


def _task(context):
    return {"metadata": {"name": "t"}, "spec": {"contexts": [context]}}


@pytest.mark.parametrize(
    "context, message",
    [
        ({"type": "File", "file": {"filePath": "/a", "source": {}}}, "exactly one of inline"),
        ({"type": "File", "file": {"filePath": "/a", "source": {"inline": "x", "secretKeyRef": {"name": "s", "key": "k"}}}}, "exactly one of inline"),
        ({"type": "File", "file": {"filePath": "a/b", "source": {"inline": "x"}}}, "absolute, normalised"),
        ({"type": "File", "file": {"filePath": "/a/../b", "source": {"inline": "x"}}}, "absolute, normalised"),
        ({"type": "File", "file": {"filePath": "/a//b", "source": {"inline": "x"}}}, "absolute, normalised"),
        ({"type": "File", "file": {"filePath": "/a/", "source": {"inline": "x"}}}, "absolute, normalised"),
        ({"type": "File", "remoteFile": {"filePath": "/a", "url": "https://x"}}, "needs `file`"),
        ({"type": "Bitbucket"}, "Input should be 'File', 'RemoteFile', 'Git' or 'Repository'"),
        ({"type": "Repository"}, "Repository needs `repository`"),
        ({"type": "Repository", "repository": {"repo": "r"}}, "org\n  Field required"),
        ({"type": "Repository", "repository": {"org": "a/b", "repo": "r"}}, "one path segment"),
        ({"type": "Repository", "repository": {"org": "o", "repo": ".."}}, "one path segment"),
        ({"type": "Repository", "repository": {"org": "o", "repo": "r", "branch": "--upload-pack=x"}}, "branch, tag or commit"),
        ({"type": "Repository", "repository": {"org": "o", "repo": "r", "branch": "a..b"}}, "branch, tag or commit"),
        ({"type": "RemoteFile", "remoteFile": {"filePath": "/a", "url": "ftp://x"}}, "http:// or https://"),
        ({"type": "RemoteFile", "remoteFile": {"filePath": "/a", "url": "https://x", "headers": [{"name": "A"}]}}, "exactly one of value, valueFrom"),
    ],
)
def test_bad_contexts_are_refused_with_a_message(context, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        Task.model_validate(_task(context))


def test_task_timeout_retries_and_ttl():
    doc = _task({"type": "File", "file": {"filePath": "/a", "source": {"inline": "x"}}})
    doc["spec"].update(timeout="1h30m", retries={"limit": 3, "backoff": {"initialDelay": "5s", "factor": 2.5, "maxDelay": "2m"}}, ttlSecondsAfterFinished=60)
    task = Task.model_validate(doc)
    assert parse_duration(task.spec.timeout).total_seconds() == 5400
    assert task.spec.retries.backoff.factor == 2.5
    for bad in ({"timeout": "30 minutes"}, {"timeout": "0s"}, {"retries": {"limit": -1}}, {"ttlSecondsAfterFinished": -5}):
        with pytest.raises(ValidationError):
            Task.model_validate({**doc, "spec": {**doc["spec"], **bad}})


def test_batchrun_needs_exactly_one_of_ref_and_spec():
    inline = {"commonContext": [], "variableContexts": []}
    BatchRun.model_validate({"spec": {"batchRef": "b"}})
    BatchRun.model_validate({"spec": {"batchSpec": inline}})
    for spec in ({}, {"batchRef": "b", "batchSpec": inline}):
        with pytest.raises(ValidationError, match="exactly one of batchRef, batchSpec"):
            BatchRun.model_validate({"spec": spec})


@pytest.mark.parametrize("expr", ["*/5 * * * *", "0 3 * * MON-FRI", "0 0 1,15 * *", "@daily", "5 4 * * sun", "0-30/10 8-18 * 1-6 *"])
def test_valid_cron(expr):
    assert is_valid_cron(expr)


@pytest.mark.parametrize("expr", ["", "61 * * * *", "* * *", "0 24 * * *", "@often", " 0 * * * *", "0 0 32 * *", "* * * * * *"])
def test_invalid_cron(expr):
    assert not is_valid_cron(expr)


def test_cron_macros_expand():
    assert to_five_fields("@hourly") == "0 * * * *" and to_five_fields("1 2 3 4 5") == "1 2 3 4 5"


def test_schedule_validation():
    base = {"commonContext": [], "variableContexts": []}
    Batch.model_validate({"spec": {**base, "schedule": {"cron": "@daily", "timeZone": "Europe/Berlin", "concurrencyPolicy": "Forbid"}}})
    for schedule in ({"cron": "every day"}, {"cron": "@daily", "timeZone": "Mars/Olympus"}, {"cron": "@daily", "concurrencyPolicy": "Sometimes"}):
        with pytest.raises(ValidationError):
            Batch.model_validate({"spec": {**base, "schedule": schedule}})


@pytest.mark.parametrize("env", ["GITHUB_TOKEN", {"name": "GITHUB_TOKEN"}])
def test_credential_env_is_a_name_or_an_object_with_a_name(env):
    ws = WorkspaceConfigSpec.model_validate({"credentials": [{"secretRef": {"name": "github-token"}, "env": env}]})
    [credential] = ws.credentials
    assert (credential.env, credential.name, credential.display_name, credential.secret_ref.key) == (
        "GITHUB_TOKEN", None, "github-token", None)
    assert ws.service_account_name is None  # the Job falls back to the namespace's `default`


@pytest.mark.parametrize(
    "credential, message",
    [
        ({"secretRef": {"name": "s"}, "env": "1BAD"}, "not an env var name"),
        ({"secretRef": {"name": "s"}, "env": {"name": "GITHUB-TOKEN"}}, "not an env var name"),
        ({"secretRef": {"name": "s"}, "env": {"name": "A", "value": "x"}}, "Input should be a valid string"),
        ({"secretRef": {"name": "s", "key": "k"}}, "needs env or mountPath"),
    ],
)
def test_bad_credentials_are_refused(credential, message):
    with pytest.raises(ValidationError, match=message):
        WorkspaceConfigSpec.model_validate({"credentials": [credential]})


@pytest.mark.parametrize(
    "base_url, ok",
    [
        ("https://github.com", True),
        ("https://gitlab.example.com/group/", True),
        ("ssh://git@github.com", True),
        ("ssh://git@git.example.com:2222/prefix", True),
        ("http://github.com", False),
        ("https://x-access-token:ghp_abc@github.com", False),
        ("https://github.com?token=abc", False),
        ("git@github.com:myorg", False),
        ("file:///srv/git", False),
    ],
)
def test_repository_base_url_is_https_without_user_info_or_ssh(base_url, ok):
    if ok:
        settings = WorkspaceConfigSpec.model_validate({"repositories": {"baseURL": base_url}}).repositories
        assert settings.clone_url("o", "r") == f"{base_url.rstrip('/')}/o/r.git"
    else:
        with pytest.raises(ValidationError, match="baseURL must be"):
            WorkspaceConfigSpec.model_validate({"repositories": {"baseURL": base_url}})


def test_repository_defaults_to_github_and_a_workspace_checkout():
    ctx = Context.model_validate({"type": "Repository", "repository": {"org": "myorg", "repo": "service-a"}})
    assert ctx.file_path == "/workspace/service-a"
    assert RepositorySettings().clone_url("myorg", "service-a") == "https://github.com/myorg/service-a.git"
    moved = Context.model_validate({"type": "Repository", "repository": {"org": "o", "repo": ".github", "path": "/src/gh"}})
    assert moved.file_path == "/src/gh"


@pytest.mark.parametrize("host", ["Example.com", "*", "*.", "a/b", "https://api.example.com", "api.example.com:443", "a.*.com"])
def test_secret_header_hosts_are_host_names_or_a_wildcard_below_one(host):
    with pytest.raises(ValidationError):
        WorkspaceConfigSpec.model_validate({"secretHeaderHosts": [host]})


def test_secret_header_hosts_accept_names_and_wildcards():
    spec = WorkspaceConfigSpec.model_validate({"secretHeaderHosts": ["api.example.com", "*.internal.example.com", "localhost"]})
    assert spec.secret_header_hosts == ["api.example.com", "*.internal.example.com", "localhost"]
