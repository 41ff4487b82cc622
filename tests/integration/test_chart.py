"""The Helm chart (deploy/chart/kubetask, generated from deploy/ by kubetask.tools.chartgen) with the helm
binary built from its Go module: lint, the same objects as the kustomize tree, the API server's dry run,
and install / upgrade / uninstall on the local control plane."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import kt_stack
import pytest
import yaml
from kt_helpers import (
    ON_THE_REAL_NODE,
    api_server_port,
    apply,
    get,
    inline,
    lease_holder,
    real_workspace,
    task,
    wait_phase,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "chart" / "kubetask"
CLUSTER_SCRIPT = REPO / "deploy" / "local" / "cluster"
RELEASE = "kubetask"
KEEP = "helm.sh/resource-policy"
SYSTEM_NS, WORKER_NS = "kubetask-system", "dagster"


@pytest.fixture(scope="module")
def helm(cluster):
    exe = subprocess.run([str(CLUSTER_SCRIPT), "helm"], check=True, capture_output=True, text=True).stdout.strip()
    assert Path(exe).is_file(), f"{exe} is missing: deploy/local/cluster build makes it"

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([exe, f"--kubeconfig={cluster.kubeconfig}", *args], capture_output=True, text=True,
                              timeout=300, env={"HOME": str(Path(cluster.kubeconfig).parent), "PATH": "/usr/bin:/bin"})
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


def objects(text: str) -> dict[tuple[str, str, str], dict]:
    found = {}
    for obj in yaml.safe_load_all(text):
        if not obj:
            continue
        annotations = obj["metadata"].get("annotations") or {}
        annotations.pop(KEEP, None)
        if not annotations:
            obj["metadata"].pop("annotations", None)
        found[(obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])] = obj
    return found


def test_the_chart_lints(helm):
    result = helm("lint", "--strict", str(CHART), "--set", "tenants={team-a}")
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout, result.stdout


def test_the_chart_renders_what_kustomize_builds(helm, kubectl):
    rendered = objects(helm("template", RELEASE, str(CHART), "--set", "tenants={team-a}",
                            "--set", "metrics.serviceMonitor.enabled=true",
                            "--set", "metrics.prometheusRule.enabled=true").stdout)
    expected = objects(kubectl("kustomize", str(REPO / "deploy")).stdout)
    for obj in yaml.safe_load_all(kubectl("kustomize", str(REPO / "deploy" / "tenant")).stdout):
        obj["metadata"]["namespace"] = "team-a"
        expected |= objects(yaml.safe_dump(obj))
    expected |= objects(kubectl("kustomize", str(REPO / "deploy" / "monitoring")).stdout)
    assert sorted(rendered) == sorted(expected)
    for key, obj in expected.items():
        assert rendered[key] == obj, key
    print(f"the chart renders {len(rendered)} objects (one tenant, monitoring on); "
          f"{len(objects(helm('template', RELEASE, str(CHART)).stdout))} with the defaults")


def test_values_reach_the_bridge_and_the_rendering_passes_the_dry_run(helm, kubectl, crds):
    text = helm("template", RELEASE, str(CHART), "--set", "image.tag=9.9.9", "--set", "bridge.replicas=3",
                "--set", "watchNamespaces={team-a,team-b}", "--set", "dagster.url=http://dagster.example:3000",
                "--set", "crds.install=false", "--set", "networkPolicies.enabled=false",
                "--set", "image.pullPolicy=Always", "--set", "bridge.nodeSelector.pool=platform",
                "--set", "bridge.tolerations[0].key=dedicated", "--set", "bridge.tolerations[0].operator=Exists",
                "--set", "bridge.podAnnotations.team=platform",
                "--set", "bridge.extraEnv[0].name=KUBETASK_BRIDGE_WORKERS", "--set-string", "bridge.extraEnv[0].value=8").stdout
    rendered = objects(text)
    bridge = rendered[("Deployment", "kubetask-system", "kubetask-bridge")]
    pod = bridge["spec"]["template"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["imagePullPolicy"] == "Always" and env["KUBETASK_BRIDGE_WORKERS"] == "8"
    assert pod["spec"]["nodeSelector"] == {"pool": "platform"}
    assert pod["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert pod["metadata"]["annotations"] == {"team": "platform"}
    assert container["image"] == "ghcr.io/kubetask-dagster/kubetask-dagster:9.9.9" and bridge["spec"]["replicas"] == 3
    assert env["KUBETASK_BRIDGE_NAMESPACES"] == "team-a,team-b"
    assert env["KUBETASK_BRIDGE_DAGSTER_URL"] == env["KUBETASK_BRIDGE_DAGSTER_UI_URL"] == "http://dagster.example:3000"
    assert not any(kind in ("CustomResourceDefinition", "NetworkPolicy") for kind, _, _ in rendered)
    # A dry run creates no namespace: the chart's own namespaces exist for the check, and go after it
    namespaces = [o for o in rendered.values() if o["kind"] == "Namespace"]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(namespaces))
    try:
        result = kubectl("apply", "--dry-run=server", "-f", "-", input=text, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("(server dry run)") == len(rendered)
    finally:
        kubectl("delete", "namespace", "--wait=true", "--timeout=120s", *(n["metadata"]["name"] for n in namespaces))


def test_install_upgrade_and_uninstall_on_the_local_control_plane(helm, kubectl, crds, namespace, wait_for):
    # The session's CRDs were applied by the test fixtures: mark them as the release's, as Helm adopts
    # an object that already exists (and keeps on uninstall: helm.sh/resource-policy).
    for crd in crds:
        kubectl("annotate", "--overwrite", "crd", crd, f"meta.helm.sh/release-name={RELEASE}",
                "meta.helm.sh/release-namespace=default")
        kubectl("label", "--overwrite", "crd", crd, "app.kubernetes.io/managed-by=Helm")
    try:
        # no bridge pod (replicas 0): its image is not on this machine and nothing may pull it
        helm("install", RELEASE, str(CHART), "--namespace", "default", "--wait", "--timeout", "120s",
             "--set", "bridge.replicas=0", "--set", f"tenants={{{namespace}}}")
        assert get(kubectl, "kubetask-system", "deployment", "kubetask-bridge")["spec"]["replicas"] == 0
        assert get(kubectl, namespace, "workspaceconfig", "default")["spec"]["serviceAccountName"] == "kubetask-agent"
        assert get(kubectl, namespace, "rolebinding", "kubetask-run-worker") is not None
        status = json.loads(helm("status", RELEASE, "--namespace", "default", "-o", "json").stdout)
        assert status["info"]["status"] == "deployed" and status["version"] == 1

        helm("upgrade", RELEASE, str(CHART), "--namespace", "default", "--wait", "--timeout", "120s",
             "--set", "bridge.replicas=0", "--set", f"tenants={{{namespace}}}", "--set", "bridge.logLevel=DEBUG")
        container = get(kubectl, "kubetask-system", "deployment", "kubetask-bridge")["spec"]["template"]["spec"]["containers"][0]
        assert {e["name"]: e.get("value") for e in container["env"]}["KUBETASK_BRIDGE_LOG_LEVEL"] == "DEBUG"
        assert json.loads(helm("status", RELEASE, "--namespace", "default", "-o", "json").stdout)["version"] == 2
    finally:
        helm("uninstall", RELEASE, "--namespace", "default", "--wait", "--timeout", "180s", check=False)
    assert get(kubectl, namespace, "workspaceconfig", "default") is None
    for ns in (SYSTEM_NS, WORKER_NS):
        wait_for(lambda ns=ns: get(kubectl, "", "namespace", ns) is None, timeout=120, what=f"namespace {ns} deleted")
    for crd in crds:  # kept: deleting a CRD would delete every Task
        assert get(kubectl, "", "crd", crd) is not None


def real_node_values(cluster, dagster_url: str, tenant: str) -> dict:
    """What the local real node asks of the chart: the image built here, host networking on 127.0.0.1
    (no pod network; HTTP probes would dial the node's address), kube-apiserver on loopback."""
    return {
        "image": {"repository": "localhost/kubetask-dagster", "tag": "dev", "pullPolicy": "Never"},
        "dagster": {"url": dagster_url},
        "bridge": {
            "replicas": 1, "hostNetwork": True, "healthAddress": "127.0.0.1", "healthPort": kt_stack._free_port(),
            "startupProbe": None, "livenessProbe": None, "readinessProbe": None, **ON_THE_REAL_NODE,
            "extraEnv": [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                         {"name": "KUBERNETES_SERVICE_PORT", "value": api_server_port(cluster.kubeconfig)}],
        },
        "podSecurity": {"enforce": "privileged"},  # hostNetwork is outside the restricted profile
        "crds": {"install": False},  # the session's CRDs stay the session's
        "tenants": [tenant],
    }


def test_the_chart_installs_a_bridge_that_runs_a_task_on_the_real_node(helm, kubectl, crds, cluster, dagster,
                                                                       namespace, wait_for, tmp_path):
    """`helm install` with real-node values: the bridge pod of the chart's own Deployment, ServiceAccount and
    RBAC leads and runs a Task of a tenant the chart enabled, whose agent runs on the real node too."""
    if kubectl("get", "node", "localhost", check=False).returncode != 0:
        pytest.fail("the session cluster has no real node (see deploy/local/cluster start's log)")
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(real_node_values(cluster, dagster.url, namespace)))
    paused = kt_stack.running_bridges(cluster)  # the session's bridges would run the Task too
    for b in paused:
        b.stop()
    try:
        helm("install", RELEASE, str(CHART), "--namespace", "default", "-f", str(values), "--wait", "--timeout", "180s")
        [pod] = json.loads(kubectl("get", "pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/component=bridge",
                                   "-o", "json").stdout)["items"]
        assert pod["spec"]["nodeName"] == "localhost" and pod["spec"]["hostNetwork"] is True
        assert pod["spec"]["serviceAccountName"] == "kubetask-bridge"
        name = pod["metadata"]["name"]
        wait_for(lambda: lease_holder(kubectl) == name, timeout=90, what="the chart's bridge pod to lead")
        apply(kubectl, namespace, real_workspace("real"))
        apply(kubectl, namespace, task("by-the-chart", [inline("/workspace/task.md", "run by the chart's bridge")],
                                       workspaceConfigRef="real"))
        obj = wait_phase(kubectl, wait_for, namespace, "by-the-chart", {"Completed", "Failed"}, timeout=180)
        assert obj["status"]["phase"] == "Completed", obj["status"].get("message")
        log = kubectl("logs", "-n", namespace, obj["status"]["podName"], "-c", "agent").stdout
        assert "--- File: /workspace/task.md ---\nrun by the chart's bridge\n" in log, log
        bridge_log = kubectl("logs", "-n", SYSTEM_NS, name).stdout
        assert '"level"' in bridge_log and "forbidden" not in bridge_log.lower(), bridge_log[-3000:]  # json, no refusal
    finally:
        helm("uninstall", RELEASE, "--namespace", "default", "--wait", "--timeout", "180s", check=False)
        for ns in (SYSTEM_NS, WORKER_NS):
            wait_for(lambda ns=ns: get(kubectl, "", "namespace", ns) is None, timeout=120, what=f"namespace {ns} deleted")
        for b in paused:
            b.start()
