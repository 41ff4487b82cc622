"""The generated CRDs on a real kube-apiserver: install, examples apply, bad input is rejected
with a message that names the field, the status subresource is isolated, and owner references GC."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FILE = {"type": "File", "file": {"filePath": "/workspace/task.md", "source": {"inline": "x"}}}


# These Tasks test the API server alone: the annotation keeps the session's bridge (if another test
# module started it) from running them and writing their status.
NOT_FOR_THE_BRIDGE = {"kubetask.io/executed-by": "test"}


def _task(name="t", **spec):
    return {"apiVersion": "kubetask.io/v1alpha1", "kind": "Task", "metadata": {"name": name, "annotations": NOT_FOR_THE_BRIDGE},
            "spec": {"contexts": [FILE], **spec}}


def _task_with(context):
    return {**_task(), "spec": {"contexts": [context]}}


def _ws(**spec):
    return {"apiVersion": "kubetask.io/v1alpha1", "kind": "WorkspaceConfig", "metadata": {"name": "w"},
            "spec": {"serviceAccountName": "sa", **spec}}


def _batch(name="b", **spec):
    return {"apiVersion": "kubetask.io/v1alpha1", "kind": "Batch", "metadata": {"name": name},
            "spec": {"commonContext": [FILE], "variableContexts": [[FILE]], **spec}}


def _run(name="r", **spec):
    return {"apiVersion": "kubetask.io/v1alpha1", "kind": "BatchRun", "metadata": {"name": name}, "spec": spec}


INLINE = {"commonContext": [], "variableContexts": [[FILE]]}

# (id, object, substrings the API server's message must contain: the field path and what is wrong)
BAD_INPUTS = [
    ("missing-source", _task_with({"type": "File", "file": {"filePath": "/a", "source": {}}}),
     ["spec.contexts[0].file.source", "exactly one of inline, configMapKeyRef, secretKeyRef"]),
    ("two-sources", _task_with({"type": "File", "file": {"filePath": "/a", "source": {"inline": "x", "configMapKeyRef": {"name": "c", "key": "k"}}}}),
     ["spec.contexts[0].file.source", "exactly one of"]),
    ("relative-filepath", _task_with({"type": "File", "file": {"filePath": "workspace/a.md", "source": {"inline": "x"}}}),
     ["spec.contexts[0].file.filePath", "filePath must be an absolute, normalised path"]),
    ("dotdot-filepath", _task_with({"type": "File", "file": {"filePath": "/workspace/../etc/passwd", "source": {"inline": "x"}}}),
     ["spec.contexts[0].file.filePath", "normalised"]),
    ("trailing-slash-filepath", _task_with({"type": "File", "file": {"filePath": "/workspace/", "source": {"inline": "x"}}}),
     ["spec.contexts[0].file.filePath"]),
    ("unknown-context-type", _task_with({"type": "Repository"}),
     ["spec.contexts[0].type", "Unsupported value", "Repository"]),
    ("old-repository-context", _task_with({"type": "Repository", "repository": {"org": "o", "repo": "r"}}),
     ['unknown field "spec.contexts[0].repository"']),
    ("type-body-mismatch", _task_with({"type": "File", "remoteFile": {"filePath": "/a", "url": "https://x"}}),
     ["spec.contexts[0]", "type File needs `file`"]),
    ("no-contexts", {"apiVersion": "kubetask.io/v1alpha1", "kind": "Task", "metadata": {"name": "t"}, "spec": {}},
     ["spec.contexts", "Required value"]),
    ("remote-ftp-url", _task_with({"type": "RemoteFile", "remoteFile": {"filePath": "/a", "url": "ftp://host/x"}}),
     ["spec.contexts[0].remoteFile.url", "url must be an http:// or https:// URL"]),
    ("header-two-values", _task_with({"type": "RemoteFile", "remoteFile": {"filePath": "/a", "url": "https://h/x", "headers": [
        {"name": "Authorization", "value": "v", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}}),
     ["spec.contexts[0].remoteFile.headers[0]", "exactly one of value, valueFrom"]),
    ("git-bad-url", _task_with({"type": "Git", "git": {"repository": "not a url", "path": "/workspace/repo"}}),
     ["spec.contexts[0].git.repository", "repository must be"]),
    ("git-relative-path", _task_with({"type": "Git", "git": {"repository": "https://h/r.git", "path": "repo"}}),
     ["spec.contexts[0].git.path", "path must be an absolute"]),
    ("bad-timeout", _task(timeout="30 minutes"), ["spec.timeout", "timeout must be a positive duration"]),
    ("zero-timeout", _task(timeout="0s"), ["spec.timeout", "positive duration"]),
    ("negative-retries", _task(retries={"limit": -1}), ["spec.retries.limit", "should be greater than or equal to 0"]),
    ("backoff-factor-below-one", _task(retries={"limit": 1, "backoff": {"factor": 0.5}}), ["spec.retries.backoff.factor"]),
    ("negative-ttl", _task(ttlSecondsAfterFinished=-1), ["spec.ttlSecondsAfterFinished"]),
    ("task-name-too-long", _task(name="t" * 53), ["metadata.name must be at most 52 characters"]),
    ("ws-missing-service-account", {"apiVersion": "kubetask.io/v1alpha1", "kind": "WorkspaceConfig", "metadata": {"name": "w"}, "spec": {"agentImage": "a"}},
     ["spec.serviceAccountName", "Required value"]),
    ("ws-zero-max-concurrent", _ws(maxConcurrentTasks=0), ["spec.maxConcurrentTasks", "greater than or equal to 1"]),
    ("ws-bad-env-name", _ws(credentials=[{"name": "c", "secretRef": {"name": "s", "key": "k"}, "env": "1-BAD"}]),
     ["spec.credentials[0].env", "env must be a valid env var name"]),
    ("ws-file-mode-too-big", _ws(credentials=[{"name": "c", "secretRef": {"name": "s", "key": "k"}, "mountPath": "/s", "fileMode": 4096}]),
     ["spec.credentials[0].fileMode"]),
    ("ws-bad-default-timeout", _ws(defaultTimeout="1d"), ["spec.defaultTimeout", "defaultTimeout must be a positive duration"]),
    ("batch-bad-cron", _batch(schedule={"cron": "every monday"}), ["spec.schedule.cron", "cron must be a cron expression"]),
    ("batch-cron-out-of-range", _batch(schedule={"cron": "61 * * * *"}), ["spec.schedule.cron"]),
    ("batch-bad-concurrency-policy", _batch(schedule={"cron": "@daily", "concurrencyPolicy": "Sometimes"}),
     ["spec.schedule.concurrencyPolicy", "Unsupported value"]),
    ("batch-negative-history", _batch(schedule={"cron": "@daily", "failedRunsHistoryLimit": -1}), ["spec.schedule.failedRunsHistoryLimit"]),
    ("batch-zero-parallelism", _batch(parallelism=0), ["spec.parallelism"]),
    ("scheduled-batch-name-too-long", _batch(name="b" * 34, schedule={"cron": "@daily"}),
     ["metadata.name of a Batch with spec.schedule must be at most 33"]),
    ("batch-missing-variable-contexts", {"apiVersion": "kubetask.io/v1alpha1", "kind": "Batch", "metadata": {"name": "b"}, "spec": {"commonContext": []}},
     ["spec.variableContexts", "Required value"]),
    ("batchrun-ref-and-spec", _run(batchRef="b", batchSpec=INLINE), ["spec", "exactly one of batchRef, batchSpec"]),
    ("batchrun-neither", _run(parallelism=2), ["spec", "exactly one of batchRef, batchSpec"]),
    ("batchrun-zero-parallelism", _run(batchRef="b", parallelism=0), ["spec.parallelism"]),
    ("batchrun-name-too-long", _run(name="r" * 43, batchRef="b"), ["metadata.name must be at most 42 characters"]),
    ("batchrun-inline-bad-context", _run(batchSpec={"commonContext": [{"type": "File", "file": {"filePath": "rel", "source": {"inline": "x"}}}], "variableContexts": []}),
     ["spec.batchSpec.commonContext[0].file.filePath"]),
]


def test_crds_are_established(kubectl):
    out = kubectl("get", "crd", "-o", "json").stdout
    crds = {c["metadata"]["name"]: c for c in json.loads(out)["items"]}
    for plural in ("tasks", "batches", "batchruns", "workspaceconfigs"):
        crd = crds[f"{plural}.kubetask.io"]
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", plural


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_applies(path, kubectl, namespace):
    result = kubectl("apply", "-n", namespace, "-f", str(path), check=False)
    assert result.returncode == 0, result.stderr


def test_at_least_twenty_bad_inputs():
    assert len(BAD_INPUTS) >= 20


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_rejected_naming_the_field(case, kubectl, namespace):
    _, obj, expected = case
    result = kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj), check=False)
    assert result.returncode != 0, f"accepted: {obj}"
    for text in expected:
        assert text in result.stderr, f"{text!r} not in: {result.stderr}"


def test_explain_documents_the_fields(kubectl):
    out = kubectl("explain", "task.spec.contexts").stdout
    assert "Inputs of the agent" in out and "remoteFile" in out and "git" in out
    out = kubectl("explain", "batchrun.status.progress").stdout
    assert "Task counts by phase" in out


def test_short_names_and_category(kubectl, namespace):
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(_task(name="listed")))
    assert "listed" in kubectl("get", "ktask", "-n", namespace).stdout
    assert "task.kubetask.io/listed" in kubectl("get", "kubetask", "-n", namespace, "-o", "name").stdout


def test_status_only_changes_through_the_subresource(kubectl, namespace):
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(_task(name="st")))
    kubectl("patch", "task", "st", "-n", namespace, "--type=merge", "-p", '{"status":{"phase":"Completed"}}')
    assert "status" not in json.loads(kubectl("get", "task", "st", "-n", namespace, "-o", "json").stdout)
    kubectl("patch", "task", "st", "-n", namespace, "--subresource=status", "--type=merge",
            "-p", '{"status":{"phase":"Running","jobName":"st-job-1","attempt":1}}')
    task = json.loads(kubectl("get", "task", "st", "-n", namespace, "-o", "json").stdout)
    assert task["status"] == {"phase": "Running", "jobName": "st-job-1", "attempt": 1}
    header, row = kubectl("get", "task", "st", "-n", namespace).stdout.splitlines()
    assert header.split()[:5] == ["NAME", "PHASE", "JOB", "ATTEMPT", "AGE"]
    assert row.split()[:4] == ["st", "Running", "st-job-1", "1"]
    bad = kubectl("patch", "task", "st", "-n", namespace, "--subresource=status", "--type=merge",
                  "-p", '{"status":{"phase":"Exploded"}}', check=False)
    assert bad.returncode != 0 and "status.phase" in bad.stderr


def test_job_owned_by_a_task_is_garbage_collected(kubectl, namespace):
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(_task(name="owner")))
    task = json.loads(kubectl("get", "task", "owner", "-n", namespace, "-o", "json").stdout)
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "owner-job-1", "ownerReferences": [{
            "apiVersion": "kubetask.io/v1alpha1", "kind": "Task", "name": "owner", "uid": task["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}]},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "agent", "image": "busybox"}]}}},
    }
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(job))
    kubectl("delete", "task", "owner", "-n", namespace, "--wait=true")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if kubectl("get", "job", "owner-job-1", "-n", namespace, check=False).returncode != 0:
            return
        time.sleep(0.5)
    pytest.fail("the Job outlived its Task")
