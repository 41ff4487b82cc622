"""Small helpers shared by the end-to-end tests (Tasks, BatchRuns): objects as dicts and kubectl reads."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from kubetask_dagster.local.launcher import ZYGOTE_MODULE


def api_server_port(kubeconfig: str) -> str:
    """kube-apiserver's port on 127.0.0.1: what an in-cluster client on the real node's host network dials."""
    return yaml.safe_load(Path(kubeconfig).read_text())["clusters"][0]["cluster"]["server"].rsplit(":", 1)[1]


def lease_holder(kubectl) -> str | None:
    """Who leads the bridges: the holder of the Lease kubetask-system/kubetask-bridge."""
    lease = get(kubectl, "kubetask-system", "lease", "kubetask-bridge")
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


def inline(path: str, text: str) -> dict:
    return {"type": "File", "file": {"filePath": path, "source": {"inline": text}}}


def apply(kubectl, namespace: str, *objects: dict) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def workspace(name: str = "default", pod_labels: dict | None = None, **spec) -> dict:
    return {
        "apiVersion": "kubetask.io/v1alpha1", "kind": "WorkspaceConfig", "metadata": {"name": name},
        "spec": {"agentImage": "example.invalid/echo-agent:1", "serviceAccountName": "default",
                 **({"podLabels": pod_labels} if pod_labels else {}), **spec},
    }


# --- the real node (deploy/local/node.sh) ------------------------------------------------------------

ECHO_AGENT = "localhost/kubetask-echo-agent:dev"
AGENT_USER = {"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True, "allowPrivilegeEscalation": False}
ON_THE_REAL_NODE = {
    "nodeSelector": {"kubetask.io/local-node": "real"},
    "tolerations": [{"key": "kubetask.io/local-node", "operator": "Equal", "value": "real", "effect": "NoSchedule"}],
}


def real_workspace(name: str = "default", **spec) -> dict:
    """A WorkspaceConfig whose agents are the echo agent, non-root, on the real node."""
    return {"apiVersion": "kubetask.io/v1alpha1", "kind": "WorkspaceConfig", "metadata": {"name": name},
            "spec": {"agentImage": ECHO_AGENT, "securityContext": AGENT_USER, "scheduling": ON_THE_REAL_NODE, **spec}}


def task(name: str, contexts: list[dict] | None = None, **spec) -> dict:
    return {"apiVersion": "kubetask.io/v1alpha1", "kind": "Task", "metadata": {"name": name},
            "spec": {"contexts": contexts or [inline("/workspace/task.md", f"do {name}")], **spec}}


def steering_stage(name: str, namespace: str, tasks: list[str] | None, labels: dict[str, str],
                   attempts: list[int] | None = None, annotations: dict[str, str] | None = None) -> dict:
    """A kwok Stage that gives the agent pods of ``tasks`` (their ``kubetask.io/task`` label; only the
    ``attempts`` given, else every attempt; ``tasks`` None: every Task) in ``namespace`` the steering ``labels`` (and ``annotations``,
    e.g. ``kubetask.io/test-result``) of deploy/local/kwok-stages.yaml, e.g. ``{"kubetask.io/test-outcome": "fail"}``.

    Its weight of 1 beats the default Stages (weight 0), and it matches a pod until the pod carries the
    labels, so kwok labels the pod first, before any default Stage starts it; then the defaults take it
    on, now steered. Create it before the pods exist (kwok reads a new pod's Stages when it sees the pod)."""
    match = " and ".join(f'(.metadata.labels[{json.dumps(k)}] == {json.dumps(v)})' for k, v in labels.items())
    expressions = [
        {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
        {"key": ".metadata.namespace", "operator": "In", "values": [namespace]},
        {"key": match, "operator": "NotIn", "values": ["true"]},
    ]
    if tasks is not None:
        expressions.append({"key": '.metadata.labels["kubetask.io/task"]', "operator": "In", "values": list(tasks)})
    if attempts is not None:
        expressions.append({"key": '.metadata.labels["kubetask.io/attempt"]', "operator": "In",
                            "values": [str(a) for a in attempts]})
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage",
        "metadata": {"name": name},
        "spec": {"resourceRef": {"apiGroup": "v1", "kind": "Pod"}, "weight": 1,
                 "selector": {"matchExpressions": expressions},
                 "next": {"patches": [{"type": "merge", "template": json.dumps(
                     {"metadata": {"labels": labels, "annotations": annotations or {}}})}]}},
    }


def get(kubectl, namespace: str, kind: str, name: str) -> dict | None:
    result = kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def wait_phase(kubectl, wait_for, namespace: str, name: str, phases: set[str], timeout: float = 90, kind: str = "task") -> dict:
    def reached():
        obj = get(kubectl, namespace, kind, name)
        return obj if obj and (obj.get("status") or {}).get("phase") in phases else None
    try:
        return wait_for(reached, timeout=timeout, interval=0.3, what=f"{kind} {name} in {phases}")
    except TimeoutError:
        raise AssertionError(f"{kind} {name} never reached {phases}: {json.dumps(get(kubectl, namespace, kind, name), indent=1)}") from None


RUN_WORKER_ROLEBINDING = Path(__file__).resolve().parents[2] / "deploy" / "tenant" / "run-worker-rolebinding.yaml"


def opt_in(kubectl, namespace: str) -> None:
    """What an operator applies per tenant (deploy/tenant's RoleBinding): the run worker's rights in ``namespace``."""
    kubectl("apply", "-n", namespace, "-f", str(RUN_WORKER_ROLEBINDING))


def condition(obj: dict, type_: str) -> dict:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def jobs(kubectl, namespace: str) -> list[dict]:
    return json.loads(kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]


def event_reasons(kubectl, namespace: str, name: str, kind: str = "Task") -> list[str]:
    items = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return [e["reason"] for e in items if e["involvedObject"]["name"] == name and e["involvedObject"]["kind"] == kind]


def run_worker_pids(dagster_home: str) -> list[int]:
    """Run worker processes of this session's Dagster: forks of the launcher's zygote (their parent is
    the zygote, whose command line they share)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes().split(b"\0")
            parent = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[1]
            parent_cmdline = Path(f"/proc/{parent}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if f"DAGSTER_HOME={dagster_home}".encode() not in environ:
            continue
        if ZYGOTE_MODULE in cmdline and ZYGOTE_MODULE in parent_cmdline:
            pids.append(int(proc.name))
    return pids


# --- BatchRuns -----------------------------------------------------------------------------------

TERMINAL = {"Completed", "Failed", "Stopped"}


def template(n: int, **extra) -> dict:
    """A batch of ``n`` Tasks: one common context, one variable context each."""
    return {"commonContext": [inline("/workspace/task.md", "summarise the item")],
            "variableContexts": [[inline("/workspace/item.md", f"item {i}")] for i in range(n)], **extra}


def batchrun(name: str, *, n: int | None = None, batch: str | None = None, annotations: dict | None = None, **spec) -> dict:
    body = {"batchRef": batch} if batch else {"batchSpec": template(n or 1)}
    return {"apiVersion": "kubetask.io/v1alpha1", "kind": "BatchRun",
            "metadata": {"name": name, **({"annotations": annotations} if annotations else {})}, "spec": {**body, **spec}}


def tasks_of(kubectl, namespace: str, batchrun_name: str) -> dict[str, dict]:
    out = kubectl("get", "tasks", "-n", namespace, "-l", f"kubetask.io/batch-run={batchrun_name}", "-o", "json").stdout
    return {t["metadata"]["name"]: t for t in json.loads(out)["items"]}


def phase(obj: dict) -> str | None:
    return (obj.get("status") or {}).get("phase")


def wait_batchrun(kubectl, wait_for, namespace: str, name: str, phases: set[str], timeout: float = 120) -> dict:
    return wait_phase(kubectl, wait_for, namespace, name, phases, timeout=timeout, kind="batchrun")


def wait_tasks(kubectl, wait_for, namespace: str, name: str, count: int, timeout: float = 60,
               phases: set[str] | None = None) -> dict[str, dict]:
    """The BatchRun's ``count`` Tasks, once they all exist (and, given ``phases``, all are in one of
    them: a Task's status is written just after its creation, so a fresh Task has no phase yet)."""
    def ready():
        t = tasks_of(kubectl, namespace, name)
        return len(t) == count and (phases is None or all(phase(x) in phases for x in t.values())) and t
    return wait_for(ready, timeout=timeout, interval=0.3, what=f"{count} Tasks of BatchRun {name}" + (f" in {sorted(phases)}" if phases else ""))
