"""ConfigMap, Secret and Job manifests: the original's shape, one Job per attempt, no secret values."""

import base64
import json
import shutil
import subprocess

import pytest

from kubetask.api import Context, GitContext, Task, WorkspaceConfigSpec
from kubetask.domain.contexts import aggregate, resolve
from kubetask.domain.errors import TaskError
from kubetask.domain.manifests import (
    DEFAULT_GIT_IMAGE,
    GIT_CLONE_SCRIPT,
    GIT_CREDENTIAL_HELPER,
    build_context_objects,
    build_job,
    config_map_name,
    job_name,
    owner_reference,
    secret_name,
    watch_selector,
)
from tests.fakes import StaticReader

NS = "team-a"
SECRET_VALUE = "s3cret-value"


def make_task(**spec):
    return Task.model_validate(
        {"metadata": {"name": "fix-bug", "namespace": NS, "uid": "uid-123"}, "spec": {"contexts": [], **spec}}
    )


def make_workspace(**spec):
    return WorkspaceConfigSpec.model_validate({"serviceAccountName": "agent-sa", **spec})


def files_of(*contexts, reader=None):
    reader = reader or StaticReader(secrets={(NS, "creds"): {"token": SECRET_VALUE}})
    parsed = [Context.model_validate(c) for c in contexts]
    return aggregate(resolve(parsed, NS, reader).parts)


def file_ctx(path, **source):
    return {"type": "File", "file": {"filePath": path, "source": source}}


def git_ctx(**git):
    return Context.model_validate({"type": "Git", "git": git}).git


def job(task=None, workspace=None, files=(), git=(), **kwargs):
    args = {"attempt": 1, "dagster_run_id": "run-abc", "timeout_seconds": None} | kwargs
    return build_job(task or make_task(), workspace or make_workspace(), list(files), list(git), **args)


def pod(manifest):
    return manifest["spec"]["template"]["spec"]


def agent(manifest):
    [container] = pod(manifest)["containers"]
    return container


# --- names and owner ---------------------------------------------------------------------------


def test_names():
    assert config_map_name("t") == "t-context"
    assert secret_name("t") == "t-context-secret"
    assert job_name("t", 1) == "t-job-1" and job_name("t", 12) == "t-job-12"
    with pytest.raises(ValueError):
        job_name("t", 0)


def test_owner_reference():
    assert owner_reference(make_task()) == {
        "apiVersion": "kubetask.io/v1alpha1",
        "kind": "Task",
        "name": "fix-bug",
        "uid": "uid-123",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    with pytest.raises(ValueError):
        owner_reference(Task.model_validate({"metadata": {"name": "x"}, "spec": {"contexts": []}}))


# --- ConfigMap and Secret ----------------------------------------------------------------------


def test_plain_files_go_to_the_config_map_and_secret_files_only_to_the_secret():
    files = files_of(
        file_ctx("/workspace/task.md", inline="Do it."),
        file_ctx("/workspace/token", secretKeyRef={"name": "creds", "key": "token"}),
        file_ctx("/workspace/mixed.md", inline="plain part"),
        file_ctx("/workspace/mixed.md", secretKeyRef={"name": "creds", "key": "token"}),
    )
    config_map, secret = build_context_objects(make_task(), files)
    assert config_map["metadata"]["name"] == "fix-bug-context"
    assert config_map["metadata"]["namespace"] == NS
    assert config_map["metadata"]["labels"] == {"app": "kubetask", "kubetask.io/task": "fix-bug"}
    assert config_map["metadata"]["ownerReferences"] == [owner_reference(make_task())]
    assert config_map["data"] == {"workspace-task.md": "Do it."}
    assert SECRET_VALUE not in json.dumps(config_map)

    assert secret["metadata"]["name"] == "fix-bug-context-secret"
    assert secret["metadata"]["labels"] == config_map["metadata"]["labels"]
    assert secret["type"] == "Opaque"
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {
        "workspace-token": SECRET_VALUE,
        "workspace-mixed.md": f'<context index="0">\nplain part\n</context>\n\n<context index="1">\n{SECRET_VALUE}\n</context>',
    }


def test_no_objects_without_files():
    assert build_context_objects(make_task(), []) == (None, None)
    config_map, secret = build_context_objects(make_task(), files_of(file_ctx("/a", inline="x")))
    assert config_map is not None and secret is None


def test_over_one_mebibyte_is_context_too_large():
    files = files_of(
        file_ctx("/workspace/big.md", inline="x" * 900_000),
        file_ctx("/workspace/medium.md", inline="y" * 200_000),
        file_ctx("/workspace/small.md", inline="z"),
    )
    with pytest.raises(TaskError) as err:
        build_context_objects(make_task(), files)
    assert err.value.reason == "ContextTooLarge"
    message = err.value.message
    assert "1.0 MiB" in message and "ConfigMap" in message
    assert message.index("/workspace/big.md") < message.index("/workspace/medium.md")
    assert "xxxx" not in message


def test_exactly_one_mebibyte_fits():
    key = "workspace-a"
    files = files_of(file_ctx("/workspace/a", inline="x" * (1_048_576 - len(key))))
    config_map, _ = build_context_objects(make_task(), files)
    assert config_map is not None


# --- the Job -----------------------------------------------------------------------------------


def test_job_metadata_and_attempt_names():
    manifest = job(attempt=3, dagster_run_id="run-xyz")
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    meta = manifest["metadata"]
    assert meta["name"] == "fix-bug-job-3" and meta["namespace"] == NS
    assert meta["labels"] == {"app": "kubetask", "kubetask.io/task": "fix-bug", "kubetask.io/attempt": "3"}
    assert meta["annotations"] == {"kubetask.io/dagster-run-id": "run-xyz", "kubetask.io/task-uid": "uid-123"}
    assert meta["ownerReferences"] == [owner_reference(make_task())]
    template = manifest["spec"]["template"]["metadata"]
    assert template["labels"] == meta["labels"] and template["annotations"] == meta["annotations"]


def test_batch_labels_of_the_task_are_passed_on():
    task = Task.model_validate(
        {
            "metadata": {
                "name": "b-task-0",
                "namespace": NS,
                "uid": "u",
                "labels": {"kubetask.io/batch-run": "b", "kubetask.io/batch": "nightly", "other": "x"},
            },
            "spec": {"contexts": []},
        }
    )
    manifest = job(task=task)
    for labels in (manifest["metadata"]["labels"], manifest["spec"]["template"]["metadata"]["labels"]):
        assert labels["kubetask.io/batch-run"] == "b" and labels["kubetask.io/batch"] == "nightly"
        assert "other" not in labels


def test_a_pooled_tasks_job_carries_its_pool_and_is_watched_by_it():
    """The steps of a pooled run share one watch of their Jobs and pods, as a BatchRun's do."""
    pooled = Task.model_validate({"metadata": {"name": "solo", "namespace": NS, "uid": "u",
                                               "labels": {"kubetask.io/pool": "p1"}}, "spec": {"contexts": []}})
    manifest = job(task=pooled)
    for labels in (manifest["metadata"]["labels"], manifest["spec"]["template"]["metadata"]["labels"]):
        assert labels["kubetask.io/pool"] == "p1" and labels["kubetask.io/task"] == "solo"
    assert watch_selector(pooled) == "kubetask.io/pool=p1"
    alone = Task.model_validate({"metadata": {"name": "solo", "namespace": NS, "uid": "u"}, "spec": {"contexts": []}})
    assert watch_selector(alone) == "kubetask.io/task=solo"
    in_batch = Task.model_validate({"metadata": {"name": "b-task-0", "namespace": NS, "uid": "u",
                                                 "labels": {"kubetask.io/batch-run": "b"}}, "spec": {"contexts": []}})
    assert watch_selector(in_batch) == "kubetask.io/batch-run=b"


def test_task_labels_do_not_reach_the_pod_and_pod_labels_merge_under_the_protected_ones():
    """The pod gets the WorkspaceConfig's podLabels, merged under our kubetask.io/ labels, and none of the
    Task's own labels (kubetask.io/test-* included: the local cluster's tests steer kwok by their own objects)."""
    task = Task.model_validate({
        "metadata": {"name": "b-task-3", "namespace": NS, "uid": "u",
                     "labels": {"kubetask.io/test-outcome": "fail", "kubetask.io/test-exit-code": "4", "kubetask.io/other": "x"}},
        "spec": {"contexts": []},
    })
    workspace = make_workspace(podLabels={"kubetask.io/test-duration-ms": "50", "team": "a",
                                          "kubetask.io/attempt": "9", "kubetask.io/task": "other", "app": "mine"})
    manifest = job(task=task, workspace=workspace, attempt=2)
    labels = manifest["spec"]["template"]["metadata"]["labels"]
    assert "kubetask.io/test-outcome" not in labels and "kubetask.io/test-exit-code" not in labels
    assert "kubetask.io/other" not in labels
    assert labels["team"] == "a" and labels["kubetask.io/test-duration-ms"] == "50"
    assert labels["kubetask.io/attempt"] == "2" and labels["kubetask.io/task"] == "b-task-3"  # ours win
    assert labels["app"] == "mine"  # podLabels are merged over ours, but for the kubetask.io/ ones
    assert not any(k.startswith("kubetask.io/test-") for k in manifest["metadata"]["labels"])

def test_job_spec_basics():
    manifest = job(task=make_task(ttlSecondsAfterFinished=600), timeout_seconds=1800)
    spec = manifest["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 1800
    assert spec["ttlSecondsAfterFinished"] == 600
    assert pod(manifest)["restartPolicy"] == "Never"
    assert pod(manifest)["serviceAccountName"] == "agent-sa"
    container = agent(manifest)
    assert container["name"] == "agent"
    assert container["image"] == "quay.io/zhaoxue/kubetask-agent-gemini:latest"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["env"] == [{"name": "TASK_NAME", "value": "fix-bug"}, {"name": "TASK_NAMESPACE", "value": NS},
                                {"name": "KUBETASK_RESULT_FILE", "value": "/dev/termination-log"}]
    assert container["terminationMessagePath"] == "/dev/termination-log" and container["terminationMessagePolicy"] == "File"
    assert "command" not in container and "args" not in container
    assert "initContainers" not in pod(manifest) and "volumes" not in pod(manifest)

    bare = job()["spec"]
    assert "activeDeadlineSeconds" not in bare and "ttlSecondsAfterFinished" not in bare


def test_workspace_pod_settings_are_copied():
    workspace = make_workspace(
        agentImage="example.com/agent:v2",
        podLabels={"team": "a", "app": "custom", "kubetask.io/task": "spoofed"},
        scheduling={
            "nodeSelector": {"pool": "ai"},
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
            "affinity": {"nodeAffinity": {}},
        },
        resources={"limits": {"cpu": "2"}},
        securityContext={"runAsNonRoot": True},
        imagePullSecrets=[{"name": "regcred"}],
    )
    manifest = job(workspace=workspace, attempt=2)
    spec = pod(manifest)
    assert agent(manifest)["image"] == "example.com/agent:v2"
    assert agent(manifest)["resources"] == {"limits": {"cpu": "2"}}
    assert agent(manifest)["securityContext"] == {"runAsNonRoot": True}
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["nodeSelector"] == {"pool": "ai"}
    assert spec["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert spec["affinity"] == {"nodeAffinity": {}}
    assert manifest["spec"]["template"]["metadata"]["labels"] == {
        "app": "custom",
        "team": "a",
        "kubetask.io/task": "fix-bug",
        "kubetask.io/attempt": "2",
    }
    assert manifest["metadata"]["labels"]["app"] == "kubetask"


def test_tools_image():
    manifest = job(workspace=make_workspace(toolsImage="example.com/tools:v1"))
    [copy] = pod(manifest)["initContainers"]
    assert copy == {
        "name": "copy-tools",
        "image": "example.com/tools:v1",
        "command": ["sh", "-c", "cp -R /tools/. /shared-tools/"],
        "volumeMounts": [{"name": "tools-volume", "mountPath": "/shared-tools"}],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}},
    }
    as_agent = {"runAsUser": 10001, "runAsNonRoot": True}
    sized = {"limits": {"cpu": "2", "memory": "4Gi"}}
    [copy] = pod(job(workspace=make_workspace(toolsImage="t:1", securityContext=as_agent, resources=sized)))["initContainers"]
    assert copy["securityContext"] == as_agent
    assert copy["resources"] == sized  # the agent's: the pod asks for no more than the agent does
    assert {"name": "tools-volume", "emptyDir": {"sizeLimit": "1Gi"}} in pod(manifest)["volumes"]
    assert {"name": "tools-volume", "mountPath": "/tools"} in agent(manifest)["volumeMounts"]
    assert agent(manifest)["env"][3:] == [
        {"name": "PATH", "value": "/tools/bin:/usr/local/bin:/usr/bin:/bin"},
        {"name": "NODE_PATH", "value": "/tools/lib/node_modules"},
        {"name": "LD_LIBRARY_PATH", "value": "/tools/lib"},
    ]


def test_credentials_are_references_never_values():
    workspace = make_workspace(
        credentials=[
            {"name": "gh", "secretRef": {"name": "github", "key": "token"}, "env": "GITHUB_TOKEN"},
            {"name": "ssh", "secretRef": {"name": "ssh", "key": "id"}, "mountPath": "/home/agent/.ssh/id", "fileMode": 0o400},
            {"name": "both", "secretRef": {"name": "cfg", "key": "c"}, "env": "CFG", "mountPath": "/home/agent/cfg"},
        ]
    )
    manifest = job(workspace=workspace)
    env = agent(manifest)["env"]
    assert env[3:] == [
        {"name": "GITHUB_TOKEN", "valueFrom": {"secretKeyRef": {"name": "github", "key": "token"}}},
        {"name": "CFG", "valueFrom": {"secretKeyRef": {"name": "cfg", "key": "c"}}},
        # where they are (for the echo agent's report), never what
        {"name": "KUBETASK_CREDENTIAL_ENV", "value": "GITHUB_TOKEN,CFG"},
        {"name": "KUBETASK_CREDENTIAL_PATHS", "value": "/home/agent/.ssh/id,/home/agent/cfg"},
    ]
    volumes = {v["name"]: v for v in pod(manifest)["volumes"]}
    assert volumes["credential-1"] == {
        "name": "credential-1",
        "secret": {"secretName": "ssh", "items": [{"key": "id", "path": "secret-file", "mode": 0o400}], "defaultMode": 0o400},
    }
    assert volumes["credential-2"]["secret"]["defaultMode"] == 0o600
    assert "credential-0" not in volumes
    mounts = agent(manifest)["volumeMounts"]
    assert {"name": "credential-1", "mountPath": "/home/agent/.ssh/id", "subPath": "secret-file", "readOnly": True} in mounts
    assert {"name": "credential-2", "mountPath": "/home/agent/cfg", "subPath": "secret-file", "readOnly": True} in mounts


def test_context_files_mounted_by_key_sorted_and_split_by_sensitivity():
    files = files_of(
        file_ctx("/workspace/z.md", inline="z"),
        file_ctx("/workspace/token", secretKeyRef={"name": "creds", "key": "token"}),
        file_ctx("/workspace/a.md", inline="a"),
    )
    manifest = job(files=files)
    assert pod(manifest)["volumes"] == [
        {"name": "context-files", "configMap": {"name": "fix-bug-context"}},
        {"name": "context-secret-files", "secret": {"secretName": "fix-bug-context-secret"}},
    ]
    assert agent(manifest)["volumeMounts"] == [
        {"name": "context-files", "mountPath": "/workspace/a.md", "subPath": "workspace-a.md", "readOnly": True},
        {"name": "context-secret-files", "mountPath": "/workspace/token", "subPath": "workspace-token", "readOnly": True},
        {"name": "context-files", "mountPath": "/workspace/z.md", "subPath": "workspace-z.md", "readOnly": True},
    ]
    assert SECRET_VALUE not in json.dumps(manifest)


def test_colliding_paths_mount_their_disambiguated_keys():
    files = files_of(file_ctx("/a/b-c", inline="1"), file_ctx("/a-b/c", inline="2"))
    config_map, _ = build_context_objects(make_task(), files)
    mounts = {m["mountPath"]: m["subPath"] for m in agent(job(files=files))["volumeMounts"]}
    assert set(mounts.values()) == set(config_map["data"]) and len(mounts) == 2
    assert config_map["data"][mounts["/a/b-c"]] == "1" and config_map["data"][mounts["/a-b/c"]] == "2"


def test_git_contexts_clone_in_init_containers_before_tools():
    repos = [
        git_ctx(repository="https://example.com/org/repo.git", ref="main", path="/workspace/repo", secretRef={"name": "git-creds"}),
        git_ctx(repository="git@example.com:org/other.git", path="/workspace/other", depth=0, secretRef={"name": "git-ssh"}),
    ]
    files = files_of(file_ctx("/workspace/repo/AGENTS.md", inline="x"))
    manifest = job(workspace=make_workspace(toolsImage="t:1", securityContext={"runAsUser": 1000}), files=files, git=repos, git_image="git:custom")
    init = pod(manifest)["initContainers"]
    assert [c["name"] for c in init] == ["git-clone-0", "git-clone-1", "copy-tools"]
    https, ssh = init[0], init[1]
    assert https["image"] == "git:custom"
    assert https["command"] == ["/bin/sh", "-c", GIT_CLONE_SCRIPT]
    assert https["securityContext"] == {"runAsUser": 1000}
    env = {e["name"]: e for e in https["env"]}
    assert env["GIT_REPOSITORY"] == {"name": "GIT_REPOSITORY", "value": "https://example.com/org/repo.git"}
    assert env["GIT_REF"]["value"] == "main" and env["GIT_DEPTH"]["value"] == "1"
    assert env["GIT_USERNAME"]["valueFrom"] == {"secretKeyRef": {"name": "git-creds", "key": "username", "optional": True}}
    assert env["GIT_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": "git-creds", "key": "password", "optional": True}}
    assert env["GIT_CA_CERT"]["valueFrom"] == {"secretKeyRef": {"name": "git-creds", "key": "ca.crt", "optional": True}}
    assert https["volumeMounts"] == [{"name": "git-0", "mountPath": "/git"}]

    ssh_env = {e["name"]: e for e in ssh["env"]}
    assert ssh_env["GIT_DEPTH"]["value"] == "0" and "GIT_REF" not in ssh_env and "GIT_PASSWORD" not in ssh_env
    assert {"name": "git-1-secret", "mountPath": "/etc/kubetask-git", "readOnly": True} in ssh["volumeMounts"]
    volumes = {v["name"]: v for v in pod(manifest)["volumes"]}
    assert volumes["git-0"] == {"name": "git-0", "emptyDir": {"sizeLimit": "4Gi"}}
    assert all(c["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}} for c in init)
    assert volumes["git-1-secret"]["secret"] == {"secretName": "git-ssh", "defaultMode": 0o444, "optional": True}

    mounts = agent(manifest)["volumeMounts"]
    paths = [m["mountPath"] for m in mounts]
    assert paths == sorted(paths)
    assert paths.index("/workspace/repo") < paths.index("/workspace/repo/AGENTS.md")
    assert {"name": "git-0", "mountPath": "/workspace/repo", "subPath": "checkout"} in mounts


def test_git_strings_never_enter_the_script():
    # The models refuse this ref; the script must stay safe even for what validation would let through.
    with pytest.raises(ValueError, match="not a branch, tag or commit name"):
        git_ctx(repository="https://example.com/r.git", ref="main; rm -rf /", path="/workspace/r")
    nasty = GitContext.model_construct(
        repository="https://example.com/$(touch /pwned);`id`.git", ref="main; rm -rf /", path="/workspace/r", depth=None, secret_ref=None
    )
    [clone] = pod(job(git=[nasty]))["initContainers"]
    assert clone["command"][2] == GIT_CLONE_SCRIPT
    assert "pwned" not in GIT_CLONE_SCRIPT and "rm -rf" not in GIT_CLONE_SCRIPT
    assert {"name": "GIT_REF", "value": "main; rm -rf /"} in clone["env"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_clone_script_clones_a_local_repository(tmp_path):
    """Run the fixed script against a local repository (over file://, so allow that protocol here)."""
    origin = tmp_path / "origin"
    run = lambda *cmd, cwd=origin: subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)  # noqa: E731
    origin.mkdir()
    run("git", "init", "-q", "-b", "main")
    (origin / "README.md").write_text("first\n")
    run("git", "add", ".")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    first = run("git", "rev-parse", "HEAD").stdout.strip()
    (origin / "README.md").write_text("second\n")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "two")

    script = GIT_CLONE_SCRIPT.replace("/git/", f"{tmp_path}/vol/").replace("/etc/kubetask-git", f"{tmp_path}/none")
    script = script.replace('  https://*|http://*|ssh://*|git@*) ;;', '  file://*) ;;')
    base_env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(tmp_path), "GIT_ALLOW_PROTOCOL": "file", "GIT_TERMINAL_PROMPT": "0"}

    def clone(**env):
        shutil.rmtree(tmp_path / "vol", ignore_errors=True)
        (tmp_path / "vol").mkdir()
        return subprocess.run(["/bin/sh", "-c", script], env=base_env | {"GIT_REPOSITORY": f"file://{origin}"} | env, capture_output=True, text=True)

    assert clone(GIT_DEPTH="1", GIT_REF="main").returncode == 0
    assert (tmp_path / "vol/checkout/README.md").read_text() == "second\n"
    assert run("git", "rev-list", "--count", "HEAD", cwd=tmp_path / "vol/checkout").stdout.strip() == "1"
    assert clone(GIT_DEPTH="0", GIT_REF=first).returncode == 0
    assert (tmp_path / "vol/checkout/README.md").read_text() == "first\n"
    assert clone(GIT_DEPTH="0").returncode == 0
    assert (tmp_path / "vol/checkout/README.md").read_text() == "second\n"
    refused = clone(GIT_DEPTH="1", GIT_REF="--upload-pack=touch pwned")
    assert refused.returncode == 2 and "must not start with '-'" in refused.stderr
    assert not list(tmp_path.rglob("pwned"))


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"GIT_USERNAME": "bot", "GIT_PASSWORD": "pa ss'$x"}, ["username=bot", "password=pa ss'$x"]),
        ({"GIT_PASSWORD": "token-only"}, ["username=git", "password=token-only"]),
        ({}, []),
    ],
)
def test_git_credential_helper_answers_from_env(tmp_path, env, expected):
    result = subprocess.run(
        ["git", "-c", f"credential.helper={GIT_CREDENTIAL_HELPER}", "credential", "fill"],
        input="protocol=https\nhost=example.com\n\n",
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(tmp_path), "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false"} | env,
        capture_output=True,
        text=True,
    )
    lines = result.stdout.splitlines()
    for line in expected:
        assert line in lines
    if not expected:
        assert not any(line.startswith(("username=", "password=")) for line in lines)


@pytest.mark.parametrize(
    ("workspace", "files", "git", "clash"),
    [
        ({}, ["/workspace/a"], ["/workspace/a"], "/workspace/a"),
        ({"toolsImage": "t:1"}, ["/tools"], [], "/tools"),
        ({"credentials": [{"name": "c", "secretRef": {"name": "s", "key": "k"}, "mountPath": "/workspace/a"}]}, ["/workspace/a"], [], "/workspace/a"),
        ({"toolsImage": "t:1"}, [], ["/tools"], "/tools"),
        ({}, [], ["/r", "/r"], "/r"),
    ],
)
def test_mount_path_conflicts(workspace, files, git, clash):
    contexts = [file_ctx(path, inline="x") for path in files]
    repos = [git_ctx(repository="https://example.com/r.git", path=path) for path in git]
    with pytest.raises(TaskError) as err:
        job(workspace=make_workspace(**workspace), files=files_of(*contexts), git=repos)
    assert err.value.reason == "MountPathConflict"
    assert clash in err.value.message


@pytest.mark.parametrize(
    ("credential_path", "files", "git"),
    [
        ("/workspace/repo/.token", [], ["/workspace/repo"]),  # inside a checkout the agent may commit and push
        ("/home/agent/creds", ["/home/agent/creds/notes.md"], []),  # a context file inside a credential directory
    ],
)
def test_a_credential_is_never_nested_with_another_mount(credential_path, files, git):
    workspace = make_workspace(credentials=[{"name": "tok", "secretRef": {"name": "s", "key": "k"}, "mountPath": credential_path}])
    with pytest.raises(TaskError) as err:
        job(workspace=workspace, files=files_of(*[file_ctx(p, inline="x") for p in files]),
            git=[git_ctx(repository="https://example.com/r.git", path=p) for p in git])
    assert err.value.reason == "MountPathConflict" and "one inside the other" in err.value.message
    # a context file inside a checkout (an AGENTS.md for the repository) stays a supported layout
    job(files=files_of(file_ctx("/workspace/repo/AGENTS.md", inline="x")),
        git=[git_ctx(repository="https://example.com/r.git", path="/workspace/repo")])


def test_allowed_path_prefixes_bound_where_a_task_mounts_its_inputs():
    workspace = make_workspace(allowedPathPrefixes=["/workspace", "/home/agent/inputs"],
                               credentials=[{"name": "c", "secretRef": {"name": "s", "key": "k"}, "mountPath": "/home/agent/.token"}])
    job(workspace=workspace, files=files_of(file_ctx("/workspace/task.md", inline="x"), file_ctx("/home/agent/inputs/a", inline="y")),
        git=[git_ctx(repository="https://example.com/r.git", path="/workspace/repo")])  # the admin's credential may be elsewhere
    for files, git in ((["/home/agent/.bashrc"], []), ([], ["/srv/repo"]), (["/workspacex/task.md"], [])):
        with pytest.raises(TaskError) as err:
            job(workspace=workspace, files=files_of(*[file_ctx(p, inline="x") for p in files]),
                git=[git_ctx(repository="https://example.com/r.git", path=p) for p in git])
        assert err.value.reason == "MountPathRefused" and "allowedPathPrefixes are /workspace, /home/agent/inputs" in err.value.message


def test_default_git_image():
    assert DEFAULT_GIT_IMAGE == "alpine/git:2.47.2"
    [clone] = pod(job(git=[git_ctx(repository="https://example.com/r.git", path="/r")]))["initContainers"]
    assert clone["image"] == DEFAULT_GIT_IMAGE


def test_credentials_without_a_key_give_the_whole_secret():
    workspace = make_workspace(
        credentials=[
            {"secretRef": {"name": "provider-env"}},  # neither env nor mountPath: every key as an env var
            {"secretRef": {"name": "kube-config"}, "mountPath": "/home/agent/.kube", "fileMode": 0o440},
        ]
    )
    manifest = job(workspace=workspace)
    assert agent(manifest)["envFrom"] == [{"secretRef": {"name": "provider-env"}}]
    volumes = {v["name"]: v for v in pod(manifest)["volumes"]}
    assert "credential-0" not in volumes
    assert volumes["credential-1"] == {"name": "credential-1", "secret": {"secretName": "kube-config", "defaultMode": 0o440}}
    assert {"name": "credential-1", "mountPath": "/home/agent/.kube", "readOnly": True} in agent(manifest)["volumeMounts"]


def test_an_env_credential_must_be_bound_to_a_key_first():
    workspace = make_workspace(credentials=[{"secretRef": {"name": "github-token"}, "env": {"name": "GITHUB_TOKEN"}}])
    with pytest.raises(ValueError, match="bind its key first"):
        job(workspace=workspace)


def test_the_service_account_defaults_to_the_namespaces_default():
    assert pod(job(workspace=WorkspaceConfigSpec.model_validate({})))["serviceAccountName"] == "default"


def test_a_repository_context_is_cloned_like_git_with_the_workspace_clone_secret():
    workspace = make_workspace(repositories={"baseURL": "https://git.example.com/", "secretRef": {"name": "clone"}})
    contexts = [Context.model_validate({"type": "Repository", "repository": {"org": "myorg", "repo": "service-a", "branch": "release/2.x"}})]
    resolution = resolve(contexts, NS, StaticReader(), repositories=workspace.repositories)
    manifest = job(workspace=workspace, git=resolution.git)
    [clone] = pod(manifest)["initContainers"]
    assert clone["command"][2] == GIT_CLONE_SCRIPT
    env = {e["name"]: e for e in clone["env"]}
    assert env["GIT_REPOSITORY"]["value"] == "https://git.example.com/myorg/service-a.git"
    assert env["GIT_REF"]["value"] == "release/2.x"
    assert env["GIT_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": "clone", "key": "password", "optional": True}}
    assert {"name": "git-0", "mountPath": "/workspace/service-a", "subPath": "checkout"} in agent(manifest)["volumeMounts"]
    assert "clone" not in json.dumps(agent(manifest))  # the clone Secret reaches the init container only


def test_host_network_is_the_operators_switch():
    assert "hostNetwork" not in pod(job())
    assert pod(job(host_network=True))["hostNetwork"] is True


def test_the_agents_group_owns_the_pods_volumes():
    assert "securityContext" not in pod(job())
    workspace = make_workspace(securityContext={"runAsUser": 10001, "runAsGroup": 10002, "runAsNonRoot": True})
    assert pod(job(workspace=workspace))["securityContext"] == {"fsGroup": 10002}


def test_the_agent_gets_no_api_token_unless_the_workspace_opts_in():
    assert pod(job())["automountServiceAccountToken"] is False
    assert pod(job(workspace=make_workspace(automountServiceAccountToken=True)))["automountServiceAccountToken"] is True


@pytest.mark.parametrize("path", ["/usr/local/bin", "/etc/ld.so.preload", "/tools/bin/node", "/var/run/docker.sock", "/lib64"])
def test_mounts_in_system_directories_are_refused(path):
    with pytest.raises(TaskError) as raised:
        job(files=files_of(file_ctx(path, inline="#!/bin/sh\nevil\n")))
    assert raised.value.reason == "MountPathRefused" and path in raised.value.message
    with pytest.raises(TaskError):
        job(workspace=make_workspace(credentials=[{"secretRef": {"name": "s", "key": "k"}, "mountPath": path}]))
    with pytest.raises(TaskError):
        job(git=[git_ctx(repository="https://h/r.git", path=path)])
    job(files=files_of(file_ctx("/usr-data/x", inline="fine"), file_ctx("/varrun", inline="fine")))  # only the directories


def test_an_object_under_our_name_is_ours_a_predecessors_or_foreign():
    from kubetask.domain.manifests import FOREIGN, OURS, PREDECESSOR, ownership

    ours = owner_reference(make_task())
    assert ownership([ours], ours) == OURS
    assert ownership([{**ours, "uid": "uid-of-a-deleted-task"}], ours) == PREDECESSOR
    assert ownership([{**ours, "uid": "other", "name": "another-task"}], ours) == FOREIGN
    assert ownership([{**ours, "controller": False}], ours) == FOREIGN  # a mere reference controls nothing
    assert ownership([{**ours, "kind": "BatchRun"}], ours) == FOREIGN
    assert ownership(None, ours) == ownership([], ours) == FOREIGN
