"""deploy/ against the real control plane (RBAC authorization; the admin token alone is in system:masters).

- Every kustomization under deploy/ (but deploy/local) passes `kubectl apply --dry-run=server`, without
  a PodSecurity warning (kubetask-system enforces the restricted profile).
- The RBAC is sufficient: a separate Dagster stack whose code server, daemon and run workers use a token
  of the ServiceAccount kubetask-run-worker, and a bridge using a token of kubetask-bridge (leader
  election on), run a Task that succeeds, one that fails, a stop, and a BatchRun of three Tasks; no
  request of theirs is refused (their logs and the runs' event logs never say Forbidden).
- The RBAC is minimal: `kubectl auth can-i --list` grants each ServiceAccount exactly the rights derived
  from the code (EXPECTED_* below: every API call the bridge, the code location and the ops make),
  beyond what any authenticated user gets, and nothing binds them to anything else.
- Leader election: two bridges, one leads; killing the leader hands over within ~20 s.

The session's admin bridges (kt_stack, used by other modules) would race ours for the same Tasks: they
are stopped while this module runs and started again after it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import kt_stack
import pytest
import requests
import yaml
from conftest import wait_for as wait_until
from kt_helpers import (
    api_server_port,
    apply,
    condition,
    event_reasons,
    get,
    inline,
    jobs,
    lease_holder,
    opt_in,
    real_workspace,
    task,
    wait_phase,
    workspace,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BRIDGE_NS, BRIDGE_SA = "kubetask-system", "kubetask-bridge"
WORKER_NS, WORKER_SA = "dagster", "kubetask-run-worker"
LEASE = "kubetask-bridge"

# What each ServiceAccount may do in a tenant namespace, beyond an authenticated user with no bindings:
# (resource as `kubectl auth can-i --list` names it, resourceName or "", verbs). See deploy/rbac/*.yaml
# for why each one is needed.
EXPECTED_BRIDGE = {
    ("tasks.kubetask.io", "", "get list watch"),
    ("workspaceconfigs.kubetask.io", "", "get list watch"),
    ("batches.kubetask.io", "", "get list watch"),
    ("batchruns.kubetask.io", "", "get list watch patch delete"),
    ("tasks.kubetask.io/status", "", "patch"),
    ("batchruns.kubetask.io/status", "", "patch"),
    ("batches.kubetask.io/status", "", "patch"),
    ("workspaceconfigs.kubetask.io/status", "", "patch"),  # running, queued
    ("jobs.batch", "", "get"),
    ("events", "", "create"),
    ("customresourcedefinitions.apiextensions.k8s.io", "", "list watch"),
    ("subjectaccessreviews.authorization.k8s.io", "", "create"),
}
# ...and in its own namespace, for leader election, in addition:
EXPECTED_BRIDGE_LEASE = {
    ("leases.coordination.k8s.io", "", "create"),
    ("leases.coordination.k8s.io", LEASE, "get update"),
}
# The run worker, cluster-wide: only the code location's catalog of Batches...
EXPECTED_WORKER_CLUSTER = {
    ("batches.kubetask.io", "", "get list"),
}
# ...and in a namespace that opted in (deploy/tenant's RoleBinding), everything a run does there.
EXPECTED_WORKER_TENANT = {
    ("tasks.kubetask.io", "", "get list create"),
    ("workspaceconfigs.kubetask.io", "", "get"),
    ("batchruns.kubetask.io", "", "get list create patch delete"),
    ("tasks.kubetask.io/status", "", "patch"),
    ("batchruns.kubetask.io/status", "", "patch"),
    ("batches.kubetask.io/status", "", "patch"),
    ("workspaceconfigs.kubetask.io/status", "", "patch"),  # rateLimitedUntil, recentStarts, spend
    ("tasks.kubetask.io/finalizers", "", "update"),
    ("batchruns.kubetask.io/finalizers", "", "update"),
    ("batches.kubetask.io/finalizers", "", "update"),
    ("configmaps", "", "get create update"),
    ("secrets", "", "get create update"),
    ("jobs.batch", "", "get list watch create delete"),
    ("pods", "", "list watch patch"),  # patch: the kubetask.io/slot scheduling gate of a Kueue-queued pod
    ("pods/log", "", "get"),
    ("events", "", "create list"),
}


def _expand(rows: set[tuple[str, str, str]]) -> set[tuple[str, str, str, str]]:
    return {(res, "", name, verb) for res, name, verbs in rows for verb in verbs.split()}


# --- helpers -------------------------------------------------------------------------------------


def rights(kubectl, user: str, namespace: str) -> set[tuple[str, str, str, str]]:
    """`kubectl auth can-i --list` as ``user`` in ``namespace``: {(resource, non-resource URL, name, verb)}."""
    out = kubectl("auth", "can-i", "--list", f"--as={user}", "-n", namespace).stdout.splitlines()
    header = out[0]
    cols = [header.index(h) for h in ("Resources", "Non-Resource URLs", "Resource Names", "Verbs")] + [None]
    found = set()
    for line in out[1:]:
        if not line.strip():
            continue
        res, urls, names, verbs = (line[cols[i]:cols[i + 1]].strip() for i in range(4))
        strip = lambda s: s.strip("[]").split()  # noqa: E731
        for url in strip(urls) or [""]:
            for name in strip(names) or [""]:
                for verb in strip(verbs):
                    found.add((res, url, name, verb))
    return found


def kubeconfig_for(cluster, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig with a fresh token of the ServiceAccount, for the same server and CA as the admin's."""
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    server = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [server],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": server["name"], "user": sa, "namespace": namespace}}],
        "current-context": sa,
    }
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config))
    return path


TEST_NAMESPACE = re.compile(r"\bt-[a-z0-9-]+-[0-9a-f]{6}\b")  # tests/integration/conftest.py names them so
FORBIDDEN = re.compile(r"forbidden", re.IGNORECASE)  # every refusal says so: "(403)\nReason: Forbidden", "403 Forbidden"


@dataclass
class Stack:
    dagster: kt_stack.Dagster
    bridge: kt_stack.Bridge
    bridge_kubeconfig: Path
    worker_kubeconfig: Path
    dagster_url: str
    run_ids: list[str]

    def bridge_args(self, health_port: int) -> list[str]:
        return ["--dagster-url", self.dagster_url, "--health-bind", f"127.0.0.1:{health_port}", "--drift-interval", "2",
                "--leader-elect", "--leader-election-namespace", BRIDGE_NS,
                "--run-worker", f"system:serviceaccount:{WORKER_NS}:{WORKER_SA}"]

    def logs(self) -> dict[str, str]:
        run = Path(self.dagster.home) / "run"
        texts = {p.name: p.read_text(errors="replace") for p in Path(self.dagster.home).glob("bridge-*.log")}
        texts.update({f"dagster {p.name}": p.read_text(errors="replace") for p in run.glob("*.log")})
        return texts

    def assert_nothing_forbidden(self, namespace: str) -> None:
        """A refused request would often be swallowed (an Event, a log tail): look for it everywhere.

        Other modules' namespaces may still be terminating when this stack starts: writes there are
        refused ("being terminated") whatever the RBAC, and are not counted."""
        texts = self.logs()
        texts.update({f"run {r}": self.dagster.event_log_text(r) for r in self.run_ids})
        for where, text in texts.items():
            lines = text.splitlines()
            hits = []
            for i, line in enumerate(lines):
                if not FORBIDDEN.search(line):
                    continue
                near = "\n".join(lines[max(0, i - 5):i + 6])
                others = set(TEST_NAMESPACE.findall(near)) - {namespace}
                if "being terminated" in near or (others and namespace not in near):
                    continue
                hits.append(line)
            assert not hits, f"{where} shows refused requests:\n" + "\n".join(hits[:10])


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def platform(cluster, crds):
    """deploy/rbac applied for real: namespaces, ServiceAccounts, roles and bindings."""
    cluster.kubectl("apply", "-k", str(DEPLOY / "rbac"))
    return cluster


@pytest.fixture(scope="module")
def stack(platform):
    cluster = platform
    paused = kt_stack.running_bridges(cluster)
    for b in paused:
        b.stop()
    home = kt_stack._run_root() / f"dagster-rbac-{os.getpid()}"
    home.mkdir(parents=True, exist_ok=True)
    bridge_kc = kubeconfig_for(cluster, BRIDGE_NS, BRIDGE_SA, home / "bridge.kubeconfig")
    worker_kc = kubeconfig_for(cluster, WORKER_NS, WORKER_SA, home / "run-worker.kubeconfig")
    env = {**os.environ, "DAGSTER_HOME": str(home), "KUBECONFIG": str(worker_kc)}
    bridge = None
    try:
        out = subprocess.run([str(kt_stack.DAGSTER_SCRIPT), "start"], env=env, check=True, capture_output=True,
                             text=True, timeout=300).stdout
        values = dict(shlex.split(line)[1].split("=", 1) for line in out.splitlines() if line.startswith("export "))
        dagster = kt_stack.Dagster(url=values["DAGSTER_URL"], home=str(home), env=env)
        s = Stack(dagster, None, bridge_kc, worker_kc, values["DAGSTER_URL"], [])  # type: ignore[arg-type]
        bridge = kt_stack.Bridge(env={**os.environ, "KUBECONFIG": str(bridge_kc), "POD_NAME": "bridge-a"},
                                 log_path=home / "bridge-a.log", args=s.bridge_args(kt_stack._free_port()))
        bridge.start()
        s.bridge = bridge
        kubectl = cluster.kubectl
        kt_wait(lambda: lease_holder(kubectl) == "bridge-a" and "cache loaded" in bridge.log(), 40, "bridge-a to lead")
        yield s
    finally:
        if bridge is not None:
            bridge.stop()
        subprocess.run([str(kt_stack.DAGSTER_SCRIPT), "stop"], env=env, check=False, capture_output=True, timeout=120)
        for b in paused:
            b.start()
        print(f"RBAC stack logs: {home}")


@pytest.fixture(scope="module")
def tenant(stack, platform):
    """One tenant namespace for the module's workload (deploy/tenant applied), deleted at the end: no
    namespace terminates while the stack runs."""
    kubectl = platform.kubectl
    name = f"t-rbac-tenant-{os.urandom(3).hex()}"
    kubectl("create", "namespace", name)
    try:
        kt_wait(lambda: get(kubectl, name, "serviceaccount", "default"), 30, f"ServiceAccount default in {name}")
        kubectl("apply", "-k", str(DEPLOY / "tenant"), "-n", name)  # agent ServiceAccount + `default` WorkspaceConfig
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


def job_names(kubectl, namespace: str, prefix: str) -> list[str]:
    return [j["metadata"]["name"] for j in jobs(kubectl, namespace) if j["metadata"]["name"].startswith(prefix)]


def kt_wait(predicate, timeout: float, what: str):
    return wait_until(predicate, timeout=timeout, interval=0.3, what=what)


# --- manifests -----------------------------------------------------------------------------------


def kustomizations() -> list[Path]:
    return sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml") if "local" not in p.relative_to(DEPLOY).parts)


PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
"""Its Go module carries the operator's own CRDs (example/prometheus-operator-crd/)."""


def install_prometheus_operator_crds(kubectl) -> None:
    """The ServiceMonitor and PrometheusRule CRDs of the Prometheus Operator, from its Go module (fetched
    from the module proxy into the project's cache like the control plane's modules), so that the API
    server checks deploy/monitoring/ against their real schemas."""
    cache = Path(os.environ.get("KUBETASK_CACHE", Path.home() / ".cache" / "kubetask-dagster"))
    env = {**os.environ, "GOMODCACHE": str(cache / "gomod"), "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    out = subprocess.run(["go", "mod", "download", "-json", PROMETHEUS_OPERATOR], env=env, cwd="/", check=True,
                         capture_output=True, text=True).stdout
    crds = Path(json.loads(out)["Dir"]) / "example" / "prometheus-operator-crd"
    for kind in ("servicemonitors", "prometheusrules"):
        kubectl("apply", "--server-side", "-f", str(crds / f"monitoring.coreos.com_{kind}.yaml"))
        kubectl("wait", "--for=condition=Established", f"crd/{kind}.monitoring.coreos.com", "--timeout=60s")


def test_every_manifest_passes_server_side_dry_run(platform, kubectl, namespace):
    dirs = kustomizations()
    assert {d.relative_to(DEPLOY).as_posix() for d in dirs} == {
        ".", "crds", "rbac", "network", "bridge", "tenant", "monitoring"}
    install_prometheus_operator_crds(kubectl)
    for d in dirs:
        objs = [o for o in yaml.safe_load_all(kubectl("kustomize", str(d)).stdout) if o]
        # tenant objects carry no namespace: they go wherever they are applied
        ns_args = ["-n", namespace] if any("namespace" not in o["metadata"] and o["kind"] in ("ServiceAccount", "WorkspaceConfig")
                                           for o in objs) else []
        result = kubectl("apply", "--dry-run=server", "-k", str(d), *ns_args, check=False)
        assert result.returncode == 0, f"{d}:\n{result.stdout}\n{result.stderr}"
        assert "server dry run" in result.stdout
        assert "PodSecurity" not in result.stderr, f"{d}: {result.stderr}"
    assert get(kubectl, BRIDGE_NS, "deployment", "kubetask-bridge") is None  # a dry run creates nothing


def test_api_server_authorizes_with_rbac(platform, kubectl, tmp_path):
    cluster = platform
    if cluster.run_dir:  # our own control plane: read its flags
        pid = Path(cluster.run_dir, "kube-apiserver.pid").read_text().split()[0]
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"--authorization-mode=RBAC" in args, args
    # ...and see it refuse: a ServiceAccount token bound to nothing lists no Tasks, reads no Secret.
    kubectl("create", "serviceaccount", "kubetask-nobody", "-n", BRIDGE_NS, check=False)
    nobody = kubeconfig_for(cluster, BRIDGE_NS, "kubetask-nobody", tmp_path / "nobody.kubeconfig")
    refused = kubectl(f"--kubeconfig={nobody}", "get", "tasks", "-A", check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()
    bridge_kc = kubeconfig_for(cluster, BRIDGE_NS, BRIDGE_SA, tmp_path / "bridge.kubeconfig")
    assert kubectl(f"--kubeconfig={bridge_kc}", "auth", "can-i", "get", "secrets", "-A", check=False).stdout.strip() == "no"
    who = json.loads(kubectl(f"--kubeconfig={bridge_kc}", "auth", "whoami", "-o", "json").stdout)["status"]["userInfo"]
    assert who["username"] == f"system:serviceaccount:{BRIDGE_NS}:{BRIDGE_SA}"
    assert "system:masters" not in who["groups"]


def test_service_accounts_get_exactly_the_minimal_rights(platform, kubectl, namespace):
    baseline = rights(kubectl, f"system:serviceaccount:{namespace}:kubetask-nobody", namespace)
    baseline_own = rights(kubectl, f"system:serviceaccount:{BRIDGE_NS}:kubetask-nobody", BRIDGE_NS)
    bridge = f"system:serviceaccount:{BRIDGE_NS}:{BRIDGE_SA}"
    worker = f"system:serviceaccount:{WORKER_NS}:{WORKER_SA}"
    assert rights(kubectl, bridge, namespace) - baseline == _expand(EXPECTED_BRIDGE)
    assert rights(kubectl, bridge, BRIDGE_NS) - baseline_own == _expand(EXPECTED_BRIDGE | EXPECTED_BRIDGE_LEASE)
    assert rights(kubectl, worker, namespace) - baseline == _expand(EXPECTED_WORKER_CLUSTER)  # not opted in
    assert rights(kubectl, worker, BRIDGE_NS) - baseline_own == _expand(EXPECTED_WORKER_CLUSTER)
    opt_in(kubectl, namespace)
    assert rights(kubectl, worker, namespace) - baseline == _expand(EXPECTED_WORKER_CLUSTER | EXPECTED_WORKER_TENANT)
    # Nothing else binds them: exactly our bindings name them, and no binding names their groups but the defaults.
    bindings = json.loads(kubectl("get", "clusterrolebindings,rolebindings", "-A", "-o", "json").stdout)["items"]
    bound = {}
    for b in bindings:
        for s in b.get("subjects") or []:
            if s.get("kind") == "ServiceAccount" and (s.get("namespace"), s["name"]) in ((BRIDGE_NS, BRIDGE_SA), (WORKER_NS, WORKER_SA)):
                bound.setdefault(s["name"], set()).add((b["kind"], b["roleRef"]["kind"], b["roleRef"]["name"]))
            if s.get("kind") == "Group" and s["name"] in (f"system:serviceaccounts:{BRIDGE_NS}", f"system:serviceaccounts:{WORKER_NS}"):
                pytest.fail(f"{b['kind']} {b['metadata']['name']} binds the whole group {s['name']}")
    assert bound == {
        BRIDGE_SA: {("ClusterRoleBinding", "ClusterRole", "kubetask-bridge"),
                    ("RoleBinding", "Role", "kubetask-bridge-leader-election")},
        WORKER_SA: {("ClusterRoleBinding", "ClusterRole", "kubetask-run-worker"),
                    ("RoleBinding", "ClusterRole", "kubetask-run-worker-tenant")},
    }


def test_view_edit_and_admin_carry_the_kubetask_rights_people_need(platform, kubectl, wait_for, namespace):
    """Kubernetes' user roles, bound in one namespace, gain the kubetask rights of deploy/rbac/user-roles.yaml
    (aggregated by the controller manager): viewers read, editors write Tasks but not WorkspaceConfigs,
    admins write WorkspaceConfigs, and nobody writes status."""
    for role in ("view", "edit", "admin"):
        kubectl("create", "rolebinding", f"people-{role}", f"--clusterrole={role}", f"--user={role}-user", "-n", namespace)

    def can(user: str, verb: str, resource: str) -> bool:
        resource, _, subresource = resource.partition("/")
        extra = [f"--subresource={subresource}"] if subresource else []
        out = kubectl("auth", "can-i", verb, resource, *extra, f"--as={user}", "-n", namespace, check=False).stdout.strip()
        return out == "yes"

    wait_for(lambda: can("admin-user", "create", "workspaceconfigs.kubetask.io"), timeout=30, what="aggregation")
    expected = {
        ("view-user", "list", "tasks.kubetask.io"): True,
        ("view-user", "get", "workspaceconfigs.kubetask.io"): True,
        ("view-user", "create", "tasks.kubetask.io"): False,
        ("edit-user", "create", "tasks.kubetask.io"): True,
        ("edit-user", "patch", "batchruns.kubetask.io"): True,  # stop and rerun are annotations
        ("edit-user", "delete", "batches.kubetask.io"): True,
        ("edit-user", "create", "workspaceconfigs.kubetask.io"): False,
        ("edit-user", "patch", "tasks.kubetask.io/status"): False,
        ("admin-user", "create", "workspaceconfigs.kubetask.io"): True,
        ("admin-user", "patch", "tasks.kubetask.io/status"): False,
    }
    assert {key: can(*key) for key in expected} == expected
    elsewhere = kubectl("auth", "can-i", "list", "tasks.kubetask.io", "--as=admin-user", "-n", "default", check=False)
    assert elsewhere.stdout.strip() == "no"  # bound in one namespace: nothing in another


# --- the workload, as the ServiceAccounts ---------------------------------------------------------


def test_task_succeeds_with_the_default_workspace_config(stack, kubectl, wait_for, tenant):
    apply(kubectl, tenant, task("ok"))
    obj = wait_phase(kubectl, wait_for, tenant, "ok", {"Completed", "Failed"}, timeout=120)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    run_id = obj["status"]["dagsterRunId"]
    stack.run_ids.append(run_id)
    assert wait_for(lambda: stack.dagster.run(run_id)["status"] == "SUCCESS", timeout=30)
    job = get(kubectl, tenant, "job", "ok-job-1")
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "kubetask-agent"
    assert get(kubectl, tenant, "configmap", "ok-context")  # created by the run worker
    assert "=== Task Content ===" in stack.dagster.event_log_text(run_id)  # pods/log, read as the run worker
    reasons = wait_for(lambda: (r := event_reasons(kubectl, tenant, "ok")) and "Completed" in r and r, timeout=15)
    assert {"RunSubmitted", "JobCreated", "Completed"} <= set(reasons)  # Events of the bridge and of the run
    stack.assert_nothing_forbidden(tenant)


def test_agent_pods_pass_the_restricted_pod_security_profile(platform, kubectl, namespace):
    """The pod of the default WorkspaceConfig, as the run worker renders it in production (with a Git clone and a
    tools copy in init containers), is admitted by a namespace enforcing Pod Security `restricted`, as
    deploy/README.md says to label tenants. The local stack's host networking (an operator setting of this
    single-node cluster) would be refused: the control shows the namespace does enforce."""
    from kubetask.api import Task, WorkspaceConfig
    from kubetask.domain import contexts, manifests

    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    kubectl("apply", "-n", namespace, "-f", str(DEPLOY / "tenant" / "agent-serviceaccount.yaml"))
    default = yaml.safe_load((DEPLOY / "tenant" / "workspaceconfig-default.yaml").read_text())
    workspace = WorkspaceConfig.model_validate(default).spec.model_copy(update={"tools_image": "example.invalid/tools:1"})
    task_model = Task.model_validate({**task("restricted"), "metadata": {"name": "restricted", "namespace": namespace, "uid": "u-1"}})
    clone = contexts.GitContext.model_validate({"repository": "https://example.invalid/org/repo.git", "path": "/workspace/repo"})

    def pod_of(host_network: bool) -> str:
        job = manifests.build_job(task_model, workspace, [], [clone], attempt=1, dagster_run_id="r", timeout_seconds=60,
                                  host_network=host_network)
        template = job["spec"]["template"]
        return yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "restricted", **template["metadata"]},
                               "spec": template["spec"]})

    admitted = kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=pod_of(False), check=False)
    assert admitted.returncode == 0, admitted.stderr
    refused = kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=pod_of(True), check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr, refused.stderr


def test_task_failure_and_secret_context(stack, kubectl, wait_for, tenant):
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "private"}, "stringData": {"brief": "top secret brief"}}
    labels = {"kubetask.io/test-outcome": "fail", "kubetask.io/test-exit-code": "7"}
    ctxs = [inline("/workspace/task.md", "do it"),
            {"type": "File", "file": {"filePath": "/workspace/private.md", "source": {"secretKeyRef": {"name": "private", "key": "brief"}}}}]
    apply(kubectl, tenant, secret, workspace("failing", pod_labels=labels), task("bad", ctxs, workspaceConfigRef="failing"))
    obj = wait_phase(kubectl, wait_for, tenant, "bad", {"Completed", "Failed"}, timeout=120)
    stack.run_ids.append(obj["status"]["dagsterRunId"])
    assert obj["status"]["phase"] == "Failed" and obj["status"]["exitCode"] == 7, obj["status"]
    assert condition(obj, "Succeeded")["reason"] == "AgentFailed"
    assert get(kubectl, tenant, "secret", "bad-context-secret")  # read one Secret, created another
    wait_for(lambda: "AgentFailed" in event_reasons(kubectl, tenant, "bad"), timeout=15)
    stack.assert_nothing_forbidden(tenant)


def test_stop_annotation_stops_the_task(stack, kubectl, wait_for, tenant):
    apply(kubectl, tenant, workspace("hanging", pod_labels={"kubetask.io/test-outcome": "hang"}),
          task("stopme", workspaceConfigRef="hanging"))
    obj = wait_phase(kubectl, wait_for, tenant, "stopme", {"Running"}, timeout=120)
    stack.run_ids.append(obj["status"]["dagsterRunId"])
    wait_for(lambda: job_names(kubectl, tenant, "stopme-"), timeout=30, what="the Job")
    kubectl("annotate", "task", "stopme", "-n", tenant, "kubetask.io/stop=true")
    obj = wait_phase(kubectl, wait_for, tenant, "stopme", {"Stopped", "Failed", "Completed"})
    assert obj["status"]["phase"] == "Stopped", obj["status"]
    wait_for(lambda: not job_names(kubectl, tenant, "stopme-"), timeout=30, what="the Job to be deleted")
    wait_for(lambda: stack.dagster.run(obj["status"]["dagsterRunId"])["status"] == "CANCELED", timeout=30)
    stack.assert_nothing_forbidden(tenant)


def test_batchrun_of_three_tasks(stack, kubectl, wait_for, tenant):
    batch = {"apiVersion": "kubetask.io/v1alpha1", "kind": "Batch", "metadata": {"name": "trio"},
             "spec": {"commonContext": [inline("/workspace/task.md", "summarise the item")],
                      "variableContexts": [[inline("/workspace/item.md", f"item {i}")] for i in range(3)]}}
    run = {"apiVersion": "kubetask.io/v1alpha1", "kind": "BatchRun", "metadata": {"name": "trio-1"}, "spec": {"batchRef": "trio"}}
    apply(kubectl, tenant, batch, run)  # the `default` WorkspaceConfig of deploy/tenant
    obj = wait_phase(kubectl, wait_for, tenant, "trio-1", {"Completed", "Failed", "Stopped"}, timeout=180, kind="batchrun")
    if obj["status"].get("dagsterRunId"):
        stack.run_ids.append(obj["status"]["dagsterRunId"])
    assert obj["status"]["phase"] == "Completed", obj["status"]
    assert obj["status"]["progress"]["completed"] == 3 and obj["status"]["progress"]["total"] == 3
    tasks = json.loads(kubectl("get", "tasks", "-n", tenant, "-l", "kubetask.io/batch-run=trio-1", "-o", "json").stdout)["items"]
    assert sorted(t["status"]["phase"] for t in tasks) == ["Completed"] * 3  # created by the run worker
    stack.assert_nothing_forbidden(tenant)


# --- leader election (last: it kills and restarts the module's bridge) -------------------------------


def test_two_bridges_one_leader_and_a_fast_takeover(stack, kubectl, wait_for, tenant):
    a = stack.bridge
    assert lease_holder(kubectl) == "bridge-a"
    b = kt_stack.Bridge(env={**a.env, "POD_NAME": "bridge-b"}, log_path=Path(stack.dagster.home) / "bridge-b.log",
                        args=stack.bridge_args(kt_stack._free_port()))
    b.start()
    try:
        time.sleep(4)  # two of b's retry periods
        assert lease_holder(kubectl) == "bridge-a"
        ready = requests.get(f"http://127.0.0.1:{b.health_port}/readyz", timeout=5)
        assert ready.status_code == 200 and "standby" in ready.text and "bridge-a" in ready.text
        assert "cache loaded" not in b.log()  # a standby watches and reconciles nothing
        transitions = get(kubectl, BRIDGE_NS, "lease", LEASE)["spec"].get("leaseTransitions", 0)
        a.kill()  # no release: b must wait for the Lease to expire
        killed = time.monotonic()
        wait_for(lambda: lease_holder(kubectl) == "bridge-b", timeout=30, interval=0.2, what="bridge-b to take over")
        takeover = time.monotonic() - killed
        # 15 s Lease + up to 2 s before b first saw a's last renewal + b's 2 s retry period + API latency
        assert takeover < 22, f"takeover after {takeover:.1f} s"
        assert get(kubectl, BRIDGE_NS, "lease", LEASE)["spec"]["leaseTransitions"] == transitions + 1
        wait_for(lambda: "cache loaded" in b.log(), timeout=30, what="bridge-b to start working")
        apply(kubectl, tenant, task("after"))  # and the new leader does the work
        obj = wait_phase(kubectl, wait_for, tenant, "after", {"Completed", "Failed"}, timeout=120)
        assert obj["status"]["phase"] == "Completed", obj["status"]
        stack.run_ids.append(obj["status"]["dagsterRunId"])
        stack.assert_nothing_forbidden(tenant)
        print(f"leader takeover after SIGKILL: {takeover:.1f} s")
    finally:
        b.stop()  # SIGTERM: b releases the Lease...
        a.start()  # ...and a, back, leads at once
    wait_for(lambda: lease_holder(kubectl) == "bridge-a", timeout=10, what="bridge-a to lead again")
    assert "released the Lease" in b.log()


def test_a_namespace_that_did_not_opt_in_gives_the_run_worker_nothing(stack, kubectl, wait_for, namespace, tenant):
    """The run worker's token reads no Secret where deploy/tenant was not applied, and a Task there fails at
    once with NamespaceNotEnabled, naming the fix; where it was applied, the same read works."""
    for ns in (namespace, tenant):
        kubectl("create", "secret", "generic", "team-secret", "-n", ns, "--from-literal=token=do-not-read")
    worker = f"--kubeconfig={stack.worker_kubeconfig}"
    refused = kubectl(worker, "get", "secret", "team-secret", "-n", namespace, "-o", "json", check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused
    assert "do-not-read" not in refused.stdout
    refused = kubectl(worker, "create", "job", "probe", "--image=x", "-n", namespace, check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused
    allowed = kubectl(worker, "get", "secret", "team-secret", "-n", tenant, "-o", "json")
    assert json.loads(allowed.stdout)["metadata"]["name"] == "team-secret"

    apply(kubectl, namespace, workspace("default"), task("not-here", [inline("/workspace/task.md", "x")]))
    obj = wait_phase(kubectl, wait_for, namespace, "not-here", {"Completed", "Failed"}, timeout=60)
    assert obj["status"]["phase"] == "Failed", obj["status"]
    assert condition(obj, "Ready")["reason"] == "NamespaceNotEnabled", obj["status"]
    assert f"kubectl apply -k deploy/tenant -n {namespace}" in obj["status"]["message"], obj["status"]
    assert "dagsterRunId" not in obj["status"] and jobs(kubectl, namespace) == []
    assert "NamespaceNotEnabled" in event_reasons(kubectl, namespace, "not-here")


def test_the_bridge_of_deploy_runs_a_task_on_the_real_node(stack, platform, kubectl, wait_for, tenant):
    """deploy/bridge as a pod of the image built here, on the real node (deploy/local/real-node-bridge:
    host network, 127.0.0.1 only), with its own ServiceAccount's token, leads and runs a Task whose
    agent runs there too."""
    if kubectl("get", "node", "localhost", check=False).returncode != 0:
        pytest.fail("the session cluster has no real node (see deploy/local/cluster start's log)")
    settings = {"KUBERNETES_SERVICE_PORT": api_server_port(platform.kubeconfig), "KUBETASK_BRIDGE_DAGSTER_URL": stack.dagster_url,
                "KUBETASK_BRIDGE_DAGSTER_UI_URL": stack.dagster_url}
    objects = [o for o in yaml.safe_load_all(kubectl("kustomize", str(DEPLOY / "local" / "real-node-bridge")).stdout) if o]
    for obj in objects:
        if obj["kind"] == "Deployment":
            [container] = obj["spec"]["template"]["spec"]["containers"]
            container["args"] = ["--leader-elect", f"--health-bind=127.0.0.1:{kt_stack._free_port()}"]
            for env in container["env"]:
                env["value"] = settings.get(env["name"], env.get("value"))
    stack.bridge.stop()  # bridge-a releases the Lease to the pod
    try:
        kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
        pod = wait_for(lambda: (p := json.loads(kubectl("get", "pods", "-n", BRIDGE_NS, "-l", "app.kubernetes.io/component=bridge",
                                                           "-o", "json").stdout)["items"]) and p[0]["metadata"]["name"],
                       timeout=60, what="the bridge pod")
        wait_for(lambda: lease_holder(kubectl) == pod, timeout=90, what="the bridge pod to lead")
        spec = get(kubectl, BRIDGE_NS, "pod", pod)["spec"]
        assert spec["nodeName"] == "localhost" and spec["hostNetwork"] is True
        assert spec["serviceAccountName"] == BRIDGE_SA
        apply(kubectl, tenant, real_workspace("real"))
        apply(kubectl, tenant, task("by-the-pod", [inline("/workspace/task.md", "run by the bridge pod")], workspaceConfigRef="real"))
        obj = wait_phase(kubectl, wait_for, tenant, "by-the-pod", {"Completed", "Failed"}, timeout=180)
        assert obj["status"]["phase"] == "Completed", obj["status"].get("message")
        stack.run_ids.append(obj["status"]["dagsterRunId"])
        log = kubectl("logs", "-n", tenant, obj["status"]["podName"], "-c", "agent").stdout
        assert "--- File: /workspace/task.md ---\nrun by the bridge pod\n" in log, log
        assert FORBIDDEN.search(kubectl("logs", "-n", BRIDGE_NS, pod).stdout) is None
    finally:
        kubectl("delete", "deployment", "kubetask-bridge", "-n", BRIDGE_NS, "--wait=true", check=False)
        wait_for(lambda: not json.loads(kubectl("get", "pods", "-n", BRIDGE_NS, "-o", "json").stdout)["items"],
                 timeout=90, what="the bridge pod gone")
        kubectl("apply", "-k", str(DEPLOY / "rbac"))  # kubetask-system back to the restricted profile
        stack.bridge.start()
    wait_for(lambda: lease_holder(kubectl) == "bridge-a", timeout=40, what="bridge-a to lead again")


@pytest.mark.parametrize("platform_namespace", [BRIDGE_NS, WORKER_NS])
def test_kubetask_work_is_refused_in_the_platform_namespaces(platform, kubectl, namespace, platform_namespace):
    body = yaml.safe_dump(task("sneaky"))
    refused = kubectl("apply", "--dry-run=server", "-n", platform_namespace, "-f", "-", input=body, check=False)
    assert refused.returncode != 0
    assert f"Task objects are refused in {platform_namespace}, a kubetask platform namespace" in refused.stderr, refused.stderr
    assert kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=body).returncode == 0  # a tenant's namespace
