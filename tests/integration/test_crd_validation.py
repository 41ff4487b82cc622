"""The generated CRDs on a real kube-apiserver: install, examples apply, the status subresource is
isolated, and owner references GC. Bad input is in ``test_bad_input.py``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from bad_inputs import crd_task

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
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


def test_explain_documents_the_fields(kubectl):
    out = kubectl("explain", "task.spec.contexts").stdout
    assert "Inputs of the agent" in out and "remoteFile" in out and "git" in out
    out = kubectl("explain", "batchrun.status.progress").stdout
    assert "Task counts by phase" in out


def test_short_names_and_category(kubectl, namespace):
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(crd_task(name="listed")))
    assert "listed" in kubectl("get", "ktask", "-n", namespace).stdout
    assert "task.kubetask.io/listed" in kubectl("get", "kubetask", "-n", namespace, "-o", "name").stdout


def test_status_only_changes_through_the_subresource(kubectl, namespace):
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(crd_task(name="st")))
    kubectl("patch", "task", "st", "-n", namespace, "--type=merge", "-p", '{"status":{"phase":"Completed"}}')
    assert "status" not in json.loads(kubectl("get", "task", "st", "-n", namespace, "-o", "json").stdout)
    kubectl("patch", "task", "st", "-n", namespace, "--subresource=status", "--type=merge",
            "-p", '{"status":{"phase":"Running","jobName":"st-job-1","attempt":1}}')
    task = json.loads(kubectl("get", "task", "st", "-n", namespace, "-o", "json").stdout)
    assert task["status"] == {"phase": "Running", "jobName": "st-job-1", "attempt": 1}
    header, row = kubectl("get", "task", "st", "-n", namespace).stdout.splitlines()
    assert header.split()[:6] == ["NAME", "PHASE", "JOB", "ATTEMPT", "PR", "AGE"]
    assert row.split()[:4] == ["st", "Running", "st-job-1", "1"]
    assert row[header.index("PR"):header.index("AGE")].strip() == ""  # no result reported yet
    bad = kubectl("patch", "task", "st", "-n", namespace, "--subresource=status", "--type=merge",
                  "-p", '{"status":{"phase":"Exploded"}}', check=False)
    assert bad.returncode != 0 and "status.phase" in bad.stderr


def test_job_owned_by_a_task_is_garbage_collected(kubectl, namespace):
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(crd_task(name="owner")))
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


def test_a_tasks_spec_is_immutable(kubectl, namespace):
    """One run per generation: an edit is refused (as a Job's template is); labels and annotations are not."""
    body = crd_task(name="fixed")
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
    assert "unchanged" in kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body)).stdout
    edited = {**body, "spec": {**body["spec"], "timeout": "5m"}}
    refused = kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(edited), check=False)
    assert refused.returncode != 0 and "spec is immutable: delete the Task and create it again" in refused.stderr
    kubectl("annotate", "task", "fixed", "-n", namespace, "kubetask.io/stop=true")
