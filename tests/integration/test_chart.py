"""The Helm chart (deploy/chart/kubetask, generated from deploy/ by kubetask.tools.chartgen) with the helm
binary built from its Go module: lint, the same objects as the kustomize tree, the API server's dry run,
and install / upgrade / uninstall on the local control plane."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from kt_helpers import get

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "chart" / "kubetask"
CLUSTER_SCRIPT = REPO / "deploy" / "local" / "cluster"
RELEASE = "kubetask"
KEEP = "helm.sh/resource-policy"


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
    wait_for(lambda: get(kubectl, "", "namespace", "kubetask-system") is None, timeout=120,
             what="the chart's namespaces deleted")
    for crd in crds:  # kept: deleting a CRD would delete every Task
        assert get(kubectl, "", "crd", crd) is not None
