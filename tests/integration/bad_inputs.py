"""The apply-time half of the bad-input corpus: objects the API server must refuse, each with the
substrings its message must contain (the field path and what is wrong)."""

from __future__ import annotations

FILE = {"type": "File", "file": {"filePath": "/workspace/task.md", "source": {"inline": "x"}}}


# These Tasks test the API server alone: the annotation keeps the session's bridge (if another test
# module started it) from running them and writing their status.
NOT_FOR_THE_BRIDGE = {"kubetask.io/executed-by": "test"}


def crd_task(name="t", **spec):
    return {"apiVersion": "kubetask.io/v1alpha1", "kind": "Task", "metadata": {"name": name, "annotations": NOT_FOR_THE_BRIDGE},
            "spec": {"contexts": [FILE], **spec}}


def _task_with(context):
    return {**crd_task(), "spec": {"contexts": [context]}}


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
APPLY_TIME = [
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
    ("unknown-context-type", _task_with({"type": "Bitbucket"}),
     ["spec.contexts[0].type", "Unsupported value", "Bitbucket"]),
    ("repository-without-body", _task_with({"type": "Repository"}),
     ["spec.contexts[0]", "Repository needs `repository`"]),
    ("repository-without-org", _task_with({"type": "Repository", "repository": {"repo": "r"}}),
     ["spec.contexts[0].repository.org", "Required value"]),
    ("repository-without-repo", _task_with({"type": "Repository", "repository": {"org": "o"}}),
     ["spec.contexts[0].repository.repo", "Required value"]),
    ("repository-org-two-segments", _task_with({"type": "Repository", "repository": {"org": "a/b", "repo": "r"}}),
     ["spec.contexts[0].repository.org", "org must be one path segment"]),
    ("repository-repo-dotdot", _task_with({"type": "Repository", "repository": {"org": "o", "repo": ".."}}),
     ["spec.contexts[0].repository.repo", "repo must be one path segment"]),
    ("repository-branch-option", _task_with({"type": "Repository", "repository": {"org": "o", "repo": "r", "branch": "--upload-pack=touch /tmp/x"}}),
     ["spec.contexts[0].repository.branch", "branch must be a branch, tag or commit name"]),
    ("repository-relative-path", _task_with({"type": "Repository", "repository": {"org": "o", "repo": "r", "path": "r"}}),
     ["spec.contexts[0].repository.path", "path must be an absolute"]),
    ("batch-repository-org-two-segments", _batch(variableContexts=[[{"type": "Repository", "repository": {"org": "a/b", "repo": "r"}}]]),
     ["spec.variableContexts[0][0].repository.org", "should match"]),
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
    ("git-url-with-token", _task_with({"type": "Git", "git": {"repository": "https://x-access-token:ghp_abc@github.com/o/r.git", "path": "/workspace/r"}}),
     ["spec.contexts[0].git.repository", "no user or token"]),
    ("git-ref-option", _task_with({"type": "Git", "git": {"repository": "https://h/r.git", "path": "/workspace/r", "ref": "--upload-pack=touch /tmp/x"}}),
     ["spec.contexts[0].git.ref", "must be a branch, tag or commit name"]),
    ("git-ref-dotdot", _task_with({"type": "Git", "git": {"repository": "https://h/r.git", "path": "/workspace/r", "ref": "main..evil"}}),
     ["spec.contexts[0].git.ref", "no .."]),
    ("git-relative-path", _task_with({"type": "Git", "git": {"repository": "https://h/r.git", "path": "repo"}}),
     ["spec.contexts[0].git.path", "path must be an absolute"]),
    ("bad-timeout", crd_task(timeout="30 minutes"), ["spec.timeout", "timeout must be a positive duration"]),
    ("zero-timeout", crd_task(timeout="0s"), ["spec.timeout", "positive duration"]),
    ("negative-retries", crd_task(retries={"limit": -1}), ["spec.retries.limit", "should be greater than or equal to 0"]),
    ("backoff-factor-below-one", crd_task(retries={"limit": 1, "backoff": {"factor": 0.5}}), ["spec.retries.backoff.factor"]),
    ("negative-ttl", crd_task(ttlSecondsAfterFinished=-1), ["spec.ttlSecondsAfterFinished"]),
    ("task-name-too-long", crd_task(name="t" * 53), ["metadata.name must be at most 52 characters"]),
    ("ws-empty-service-account", _ws(serviceAccountName=""), ["spec.serviceAccountName"]),
    ("ws-zero-max-concurrent", _ws(maxConcurrentTasks=0), ["spec.maxConcurrentTasks", "greater than or equal to 1"]),
    ("ws-bad-env-name", _ws(credentials=[{"name": "c", "secretRef": {"name": "s", "key": "k"}, "env": "1-BAD"}]),
     ["spec.credentials[0].env", "should match '^[A-Za-z_][A-Za-z0-9_]*$'"]),
    ("ws-bad-env-name-object", _ws(credentials=[{"secretRef": {"name": "s"}, "env": {"name": "GITHUB-TOKEN"}}]),
     ["spec.credentials[0].env.name", "should match '^[A-Za-z_][A-Za-z0-9_]*$'"]),
    ("ws-env-object-without-name", _ws(credentials=[{"secretRef": {"name": "s"}, "env": {"value": "GITHUB_TOKEN"}}]),
     ["spec.credentials[0].env", "must validate one and only one schema"]),
    ("ws-env-number", _ws(credentials=[{"secretRef": {"name": "s"}, "env": 3}]),
     ["spec.credentials[0].env", "must validate one and only one schema"]),
    ("ws-key-without-env-or-mount", _ws(credentials=[{"secretRef": {"name": "s", "key": "k"}}]),
     ["spec.credentials[0]", "must not validate the schema"]),
    ("ws-base-url-http", _ws(repositories={"baseURL": "http://git.example.com"}),
     ["spec.repositories.baseURL", "baseURL must be an https://host[/path] URL"]),
    ("ws-base-url-token", _ws(repositories={"baseURL": "https://x-access-token:ghp_abc@github.com"}),
     ["spec.repositories.baseURL", "without user info"]),
    ("ws-base-url-scp", _ws(repositories={"baseURL": "git@github.com:myorg"}),
     ["spec.repositories.baseURL", "ssh://"]),
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
