"""The design document's YAML (ADR 0002, copied byte for byte into fixtures/) applies unchanged to the
real API server and runs: its Task, and a Batch whose variableContexts are Repository contexts.

The document's Task block is a bare ``spec:`` (the document shows only the contexts): the test puts
the three lines of a Task's header in front of it and changes nothing else."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest
import yaml
from kt_helpers import condition, event_reasons, get, jobs, tasks_of, wait_batchrun, wait_phase

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ADR = Path(__file__).parent / "fixtures" / "adr-0002-task-crd-vs-kubernetes-job.md"
TASK_HEADER = "apiVersion: kubetask.io/v1alpha1\nkind: Task\nmetadata:\n  name: update-dependencies\n"
TOKEN = "ghp_design-doc-token-that-must-not-leak-0451"
PR_WORKFLOW = "Work on a branch, run the tests, and open one pull request that says what changed and why.\n"
NODE_LABEL = "workload-type"


def yaml_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", markdown, re.S | re.M)


BLOCKS = yaml_blocks(ADR.read_text())
[WORKSPACE_BLOCK] = [b for b in BLOCKS if b.startswith("apiVersion: kubetask.io/v1alpha1\nkind: WorkspaceConfig\n")]
[TASK_BLOCK] = [b for b in BLOCKS if b.startswith("spec:\n")]


@pytest.fixture
def ai_agent_node(kubectl):
    """The kwok node labelled ``workload-type=ai-agent``, as the document's nodeSelector wants; unlabelled after."""
    [node] = json.loads(kubectl("get", "nodes", "-l", "type=kwok", "-o", "json").stdout)["items"]
    name = node["metadata"]["name"]
    kubectl("label", "node", name, f"{NODE_LABEL}=ai-agent", "--overwrite")
    yield name
    kubectl("label", "node", name, f"{NODE_LABEL}-")


def apply_text(kubectl, namespace: str, text: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=text)


def secret_and_guidelines(kubectl, namespace: str) -> None:
    """What the document's objects refer to: a one-key Secret github-token and the guidelines ConfigMap."""
    for obj in (
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "github-token"}, "stringData": {"token": TOKEN}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "guidelines"}, "data": {"pr-workflow.md": PR_WORKFLOW}},
    ):
        apply_text(kubectl, namespace, yaml.safe_dump(obj))


def pod_spec(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def test_the_document_has_two_yaml_blocks_and_the_examples_hold_them_verbatim():
    assert len(BLOCKS) == 2, BLOCKS
    example = (ROOT / "examples" / "40-design-document.yaml").read_text()
    assert WORKSPACE_BLOCK in example
    assert TASK_HEADER + TASK_BLOCK in example


def test_the_documents_task_runs_end_to_end(kubectl, wait_for, namespace, bridge, ai_agent_node):
    secret_and_guidelines(kubectl, namespace)
    apply_text(kubectl, namespace, WORKSPACE_BLOCK)
    apply_text(kubectl, namespace, TASK_HEADER + TASK_BLOCK)

    obj = wait_phase(kubectl, wait_for, namespace, "update-dependencies", {"Completed", "Failed"}, timeout=120)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    [job] = jobs(kubectl, namespace)
    assert job["metadata"]["name"] == obj["status"]["jobName"] == "update-dependencies-job-1"
    spec = pod_spec(job)

    # /workspace/task.md: the inline part and the guidelines ConfigMap, aggregated in context tags
    config_map = json.loads(kubectl("get", "configmap", "update-dependencies-context", "-n", namespace, "-o", "json").stdout)
    assert config_map["data"] == {
        "workspace-task.md": '<context index="0">\nUpdate all dependencies to latest versions.\n\n</context>\n\n'
        f'<context index="1">\n{PR_WORKFLOW}\n</context>'
    }
    [agent] = spec["containers"]
    assert {"name": "context-files", "mountPath": "/workspace/task.md", "subPath": "workspace-task.md", "readOnly": True} in agent["volumeMounts"]

    # the clone of myorg/service-a as an init container, mounted at /workspace/service-a
    clone = next(c for c in spec["initContainers"] if c["name"] == "git-clone-0")
    clone_env = {e["name"]: e.get("value") for e in clone["env"]}
    assert clone_env["GIT_REPOSITORY"] == "https://github.com/myorg/service-a.git"
    assert "GIT_REF" not in clone_env  # no branch: the remote's HEAD
    assert clone["command"][:2] == ["/bin/sh", "-c"] and "myorg" not in clone["command"][2]
    assert {"name": "git-0", "mountPath": "/workspace/service-a", "subPath": "checkout"} in agent["volumeMounts"]
    assert [c["name"] for c in spec["initContainers"]] == ["git-clone-0", "copy-tools"]
    assert agent["image"] == "quay.io/myorg/claude-agent:v2.0"

    # GITHUB_TOKEN from the Secret's only key; the node selector; the namespace's default ServiceAccount
    assert {"name": "GITHUB_TOKEN", "valueFrom": {"secretKeyRef": {"name": "github-token", "key": "token"}}} in agent["env"]
    assert spec["nodeSelector"] == {NODE_LABEL: "ai-agent"}
    assert spec["serviceAccountName"] == "default"
    pod = json.loads(kubectl("get", "pod", obj["status"]["podName"], "-n", namespace, "-o", "json").stdout)
    assert pod["spec"]["nodeName"] == ai_agent_node

    # the value is nowhere but in its Secret
    b64 = base64.b64encode(TOKEN.encode()).decode()
    for text in (json.dumps(job), json.dumps(config_map), json.dumps(obj), kubectl("get", "events", "-n", namespace, "-o", "json").stdout):
        assert TOKEN not in text and b64 not in text

    # the debug path the document promises: describe the Task, then the logs of status.jobName
    described = kubectl("describe", "task", "update-dependencies", "-n", namespace).stdout
    assert re.search(r"Job Name:\s+update-dependencies-job-1", described), described
    assert "JobCreated" in described and "Completed" in described  # its Events
    logs = kubectl("logs", "-n", namespace, f"job/{obj['status']['jobName']}").stdout
    assert "=== Task Completed ===" in logs
    assert {"JobCreated", "Completed"} <= set(event_reasons(kubectl, namespace, "update-dependencies"))

    # idempotent and GitOps-ready: the live Task does not drift from its YAML, and applying it again
    # changes nothing and runs nothing
    task_yaml = TASK_HEADER + TASK_BLOCK
    assert kubectl("diff", "-n", namespace, "-f", "-", input=task_yaml, check=False).returncode == 0
    assert "unchanged" in kubectl("apply", "-n", namespace, "-f", "-", input=task_yaml).stdout
    time.sleep(3)  # two of the bridge's drift intervals
    again = get(kubectl, namespace, "task", "update-dependencies")
    assert again["status"]["dagsterRunId"] == obj["status"]["dagsterRunId"] and again["status"]["phase"] == "Completed"
    assert [j["metadata"]["name"] for j in jobs(kubectl, namespace)] == ["update-dependencies-job-1"]


def test_a_batch_of_repositories_runs_one_clone_per_task(kubectl, wait_for, namespace, bridge, ai_agent_node):
    secret_and_guidelines(kubectl, namespace)
    apply_text(kubectl, namespace, WORKSPACE_BLOCK)
    kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "41-batch-repositories.yaml"))

    run = wait_batchrun(kubectl, wait_for, namespace, "update-deps-everywhere-001", {"Completed", "Failed"}, timeout=180)
    assert run["status"]["phase"] == "Completed", run["status"]
    wait_for(lambda: condition(get(kubectl, namespace, "batchrun", "update-deps-everywhere-001"), "Succeeded")["status"] == "True",
             timeout=30, what="the BatchRun's Succeeded condition")
    tasks = tasks_of(kubectl, namespace, "update-deps-everywhere-001")
    assert sorted(tasks) == [f"update-deps-everywhere-001-task-{i}" for i in range(3)]

    clones = {}
    for job in jobs(kubectl, namespace):
        spec = pod_spec(job)
        clone = next(c for c in spec["initContainers"] if c["name"] == "git-clone-0")
        env = {e["name"]: e.get("value") for e in clone["env"]}
        [mount] = [m["mountPath"] for m in spec["containers"][0]["volumeMounts"] if m["name"] == "git-0"]
        clones[job["metadata"]["labels"]["kubetask.io/task"]] = (env["GIT_REPOSITORY"], env.get("GIT_REF"), mount)
        assert spec["nodeSelector"] == {NODE_LABEL: "ai-agent"}
    assert clones == {
        "update-deps-everywhere-001-task-0": ("https://github.com/myorg/service-a.git", None, "/workspace/service-a"),
        "update-deps-everywhere-001-task-1": ("https://github.com/myorg/service-b.git", "main", "/workspace/service-b"),
        "update-deps-everywhere-001-task-2": ("https://github.com/myorg/service-c.git", "release/2.x", "/workspace/src"),
    }
    task = get(kubectl, namespace, "task", "update-deps-everywhere-001-task-0")
    assert task["spec"]["contexts"][-1] == {"type": "Repository", "repository": {"org": "myorg", "repo": "service-a"}}


def test_a_workspace_git_host_and_clone_secret_reach_the_init_container_only(kubectl, wait_for, namespace, bridge):
    """A GitLab organisation sets its base URL once; the clone credentials come from the WorkspaceConfig."""
    apply_text(kubectl, namespace, yaml.safe_dump({
        "apiVersion": "kubetask.io/v1alpha1", "kind": "WorkspaceConfig", "metadata": {"name": "default"},
        "spec": {"repositories": {"baseURL": "https://gitlab.example.com/platform", "secretRef": {"name": "gitlab-clone"}}},
    }))
    apply_text(kubectl, namespace, yaml.safe_dump({
        "apiVersion": "kubetask.io/v1alpha1", "kind": "Task", "metadata": {"name": "gl"},
        "spec": {"contexts": [{"type": "Repository", "repository": {"org": "infra", "repo": "terraform", "branch": "main"}}]},
    }))
    obj = wait_phase(kubectl, wait_for, namespace, "gl", {"Completed", "Failed"}, timeout=120)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    [job] = jobs(kubectl, namespace)
    [clone] = pod_spec(job)["initContainers"]
    env = {e["name"]: e for e in clone["env"]}
    assert env["GIT_REPOSITORY"]["value"] == "https://gitlab.example.com/platform/infra/terraform.git"
    assert env["GIT_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "gitlab-clone"
    assert "gitlab-clone" not in json.dumps(pod_spec(job)["containers"])
