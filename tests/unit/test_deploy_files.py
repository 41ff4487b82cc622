"""deploy/, the Dockerfiles and the echo agent, checked without a cluster (tests/integration/test_deploy.py
applies them to one): the files agree with each other and with the code they deploy."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from crd_bridge import leader
from kubetask.api import WorkspaceConfig
from kubetask.tools.crdgen import crd_files
from kubetask.tools.crdgen import main as crdgen

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ECHO = REPO / "agents" / "echo" / "entrypoint.sh"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def find(path: Path, kind: str, name: str | None = None) -> dict:
    return next(d for d in docs(path) if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


def kustomizations() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("kustomization.yaml") if "local" not in p.relative_to(DEPLOY).parts)


# --- kustomize layout --------------------------------------------------------------------------------


def test_the_crds_kustomization_lists_every_generated_crd():
    assert crdgen(["--out", str(DEPLOY / "crds" / "bases"), "--check"]) == 0, "run: kubetask-crds"
    listed = yaml.safe_load((DEPLOY / "crds" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(f"bases/{name}" for name in crd_files())


def test_the_crds_exist_once():
    copies = [p.relative_to(DEPLOY.parent).as_posix() for p in DEPLOY.parent.rglob("kubetask.io_*.yaml")
              if ".git" not in p.parts]
    assert sorted(copies) == sorted(f"deploy/crds/bases/{name}" for name in crd_files())


def test_every_kustomization_lists_what_exists_and_stays_inside_its_directory():
    for k in kustomizations():
        spec = yaml.safe_load(k.read_text())
        assert spec["kind"] == "Kustomization"
        for entry in spec["resources"]:
            target = (k.parent / entry).resolve()
            assert target.exists(), f"{k}: {entry} does not exist"
            if target.is_dir():
                assert (target / "kustomization.yaml").exists(), f"{k}: {entry} is not a kustomization"
            else:  # kustomize's default load restrictor: files only from the kustomization's own tree
                assert k.parent.resolve() in target.parents, f"{k}: {entry} is outside {k.parent}"
                assert docs(target), f"{target} is empty"
    root = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert root["resources"] == ["crds", "rbac", "network", "bridge"]  # tenants are applied per namespace, after the CRDs


# --- monitoring: the ServiceMonitor scrapes the bridge's Service; the alerts name metrics that exist ----


def test_the_service_monitor_scrapes_the_bridges_metrics_port():
    monitor = find(DEPLOY / "monitoring" / "servicemonitor.yaml", "ServiceMonitor")
    service = find(DEPLOY / "bridge" / "service.yaml", "Service")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert _matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]


def test_every_metric_an_alert_names_is_one_the_bridge_exports():
    from crd_bridge import metrics

    exported = set()
    for family in metrics.REGISTRY.collect():
        exported |= {family.name, *(s.name for s in family.samples)}
    rules = find(DEPLOY / "monitoring" / "alerts.yaml", "PrometheusRule")["spec"]["groups"][0]["rules"]
    assert len(rules) >= 5
    for rule in rules:
        names = set(re.findall(r"\b(kubetask_[a-z_]+)", rule["expr"]))
        suffixed = {n + suffix for n in exported for suffix in ("_total", "_bucket", "_count", "_sum")}
        assert names <= exported | suffixed, (rule["alert"], names - exported)
    assert any("kubetask_task_queued_seconds_bucket" in r["expr"] for r in rules)


# --- NetworkPolicies: their selectors pick the pods they are about ------------------------------------


def _matches(selector: dict, labels: dict[str, str]) -> bool:
    ok = all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())
    for expr in selector.get("matchExpressions") or []:
        present = expr["key"] in labels
        ok = ok and {"Exists": present, "DoesNotExist": not present,
                     "In": labels.get(expr["key"]) in expr.get("values", []),
                     "NotIn": labels.get(expr["key"]) not in expr.get("values", [])}[expr["operator"]]
    return ok


def test_the_agent_policy_selects_every_agent_pod_and_keeps_it_off_the_clusters_networks():
    from kubetask.api import Task, WorkspaceConfigSpec
    from kubetask.domain.manifests import build_job

    task = Task.model_validate({"apiVersion": "kubetask.io/v1alpha1", "kind": "Task",
                                "metadata": {"name": "t", "namespace": "team-a", "uid": "u"}, "spec": {"contexts": []}})
    # podLabels cannot take the agent out of the policy: kubetask.io/ labels are protected
    workspace = WorkspaceConfigSpec.model_validate({"podLabels": {"kubetask.io/task": "other", "team": "x"}})
    labels = build_job(task, workspace, [], [], attempt=1, dagster_run_id="r", timeout_seconds=None)["spec"]["template"]["metadata"]["labels"]
    policy = find(DEPLOY / "tenant" / "agent-network-policy.yaml", "NetworkPolicy")
    assert _matches(policy["spec"]["podSelector"], labels)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and not policy["spec"].get("ingress")
    blocks = [peer["ipBlock"] for rule in policy["spec"]["egress"] for peer in rule["to"] if "ipBlock" in peer]
    refused = {cidr for block in blocks for cidr in block["except"]}
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10", "127.0.0.0/8",
            "fc00::/7", "fe80::/10"} <= refused
    assert {b["cidr"] for b in blocks} == {"0.0.0.0/0", "::/0"}
    listed = yaml.safe_load((DEPLOY / "tenant" / "kustomization.yaml").read_text())["resources"]
    assert "agent-network-policy.yaml" in listed


def test_only_the_bridge_reaches_the_writable_webserver():
    policy = find(DEPLOY / "network" / "dagster.yaml", "NetworkPolicy", "kubetask-webserver-from-the-bridge")
    [rule] = policy["spec"]["ingress"]
    [peer] = rule["from"]
    bridge = find(DEPLOY / "bridge" / "deployment.yaml", "Deployment")
    assert _matches(peer["podSelector"], bridge["spec"]["template"]["metadata"]["labels"])
    assert peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == bridge["metadata"]["namespace"]
    # the Dagster chart's component labels: the writable and the read-only webserver
    assert policy["spec"]["podSelector"]["matchLabels"] == {"component": "dagster-webserver"}
    read_only = find(DEPLOY / "network" / "dagster.yaml", "NetworkPolicy", "kubetask-read-only-webserver-from-the-ui-path")
    assert read_only["spec"]["podSelector"]["matchLabels"] == {"component": "dagster-webserver-read-only"}
    deny = find(DEPLOY / "network" / "dagster.yaml", "NetworkPolicy", "kubetask-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}


# --- the bridge --------------------------------------------------------------------------------------


def test_bridge_deployment_is_hardened_and_leader_elected():
    dep = find(DEPLOY / "bridge" / "deployment.yaml", "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert dep["spec"]["replicas"] >= 2 and dep["metadata"]["namespace"] == leader.DEFAULT_NAMESPACE
    assert pod["serviceAccountName"] == find(DEPLOY / "rbac" / "bridge.yaml", "ServiceAccount")["metadata"]["name"]
    assert c["command"] == ["python", "-m", "crd_bridge"] and "--leader-elect" in c["args"]
    bind = next(a for a in c["args"] if a.startswith("--health-bind="))
    port = next(p for p in c["ports"] if p["name"] == "metrics")
    assert bind == f"--health-bind=0.0.0.0:{port['containerPort']}"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])  # the only writable path
    svc = find(DEPLOY / "bridge" / "service.yaml", "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_lease_rights_name_the_lease_the_bridge_uses():
    role = find(DEPLOY / "rbac" / "bridge.yaml", "Role")
    assert role["metadata"]["namespace"] == leader.DEFAULT_NAMESPACE
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                      "resourceNames": [leader.DEFAULT_LEASE_NAME], "verbs": ["get", "update"]}]


def _rules(path: Path, name: str) -> list[dict]:
    return find(path, "ClusterRole", name)["rules"]


def test_roles_grant_no_wildcards_and_never_enumerate_secrets():
    for path, name in ((DEPLOY / "rbac" / "bridge.yaml", "kubetask-bridge"), (DEPLOY / "rbac" / "run-worker.yaml", "kubetask-run-worker")):
        for rule in _rules(path, name):
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            assert "nonResourceURLs" not in rule
            if "secrets" in rule["resources"]:
                assert not {"list", "watch", "delete", "patch"} & set(rule["verbs"]), rule
    assert not any("secrets" in r["resources"] or "configmaps" in r["resources"]
                   for r in _rules(DEPLOY / "rbac" / "bridge.yaml", "kubetask-bridge"))


# --- tenant ------------------------------------------------------------------------------------------


def test_default_workspace_config_is_valid_and_uses_the_agent_service_account():
    ws = WorkspaceConfig.model_validate(find(DEPLOY / "tenant" / "workspaceconfig-default.yaml", "WorkspaceConfig"))
    sa = find(DEPLOY / "tenant" / "agent-serviceaccount.yaml", "ServiceAccount")
    assert ws.metadata.name == "default" and ws.spec.service_account_name == sa["metadata"]["name"]
    assert sa["automountServiceAccountToken"] is False
    assert "namespace" not in sa["metadata"]  # applied into each tenant namespace
    assert ws.spec.agent_image.split(":")[0].endswith("/echo-agent")


# --- Dagster Helm values -----------------------------------------------------------------------------


def test_dagster_values_have_what_the_issue_asks_and_match_deploy():
    values = yaml.safe_load((DEPLOY / "dagster" / "values.yaml").read_text())
    # K8sRunLauncher written as a custom launcher, for the allowlist the chart's own values cannot set
    assert values["runLauncher"]["type"] == "CustomRunLauncher"
    launcher = values["runLauncher"]["config"]["customRunLauncher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    config = launcher["config"]
    assert config["load_incluster_config"] is True
    # no pod, container or Job field from a run's tags or the code location: all from this config
    assert config["only_allow_user_defined_k8s_config_fields"] == {}
    assert config["only_allow_user_defined_env_vars"] == []
    assert config["postgres_password_secret"] == values["global"]["postgresqlSecretName"]
    assert config["job_namespace"] == "dagster"
    from dagster._config import validate_config  # the schema dagster.yaml's run_launcher config is checked with
    from dagster_k8s import K8sRunLauncher

    checked = validate_config(K8sRunLauncher.config_type(), config)
    assert checked.success, checked.errors
    assert values["postgresql"]["enabled"] in (True, False) and values["postgresql"]["postgresqlDatabase"]
    # no password in the values: generated at install into the Secret both Dagster and Postgres read
    assert "postgresqlPassword" not in values["postgresql"] and values["generatePostgresqlPasswordSecret"] is False
    assert values["postgresql"]["existingSecret"] == values["global"]["postgresqlSecretName"]
    assert "change-me" not in (DEPLOY / "dagster" / "values.yaml").read_text()
    assert values["dagsterWebserver"]["enableReadOnly"] is True  # the read-only one is for people
    daemon = values["dagsterDaemon"]
    assert daemon["runMonitoring"]["enabled"] is True
    queue = daemon["runCoordinator"]
    assert queue["enabled"] and queue["type"] == "QueuedRunCoordinator"
    q = queue["config"]["queuedRunCoordinator"]
    assert q["maxConcurrentRuns"] > 0 and q["dequeueIntervalSeconds"] <= 5 and q["dequeueUseThreads"]
    user = values["dagster-user-deployments"]
    assert user["enabled"] and user["enableSubchart"]
    (dep,) = user["deployments"]
    assert dep["name"] == "kubetask"  # the location name the bridge submits to (--location default)
    assert dep["codeServerArgs"] == ["-m", "kubetask_dagster.definitions"]
    # run workers get their account and env from the launcher, which the allowlist leaves alone
    assert dep["includeConfigInLaunchedRuns"]["enabled"] is False
    assert config["env_vars"] == [f"{k}={v}" for k, v in dep["env"].items()]
    worker_sa = find(DEPLOY / "rbac" / "run-worker.yaml", "ServiceAccount")["metadata"]
    assert user["serviceAccount"] == {"create": False, "name": worker_sa["name"]}
    assert config["service_account_name"] == worker_sa["name"]
    assert worker_sa["namespace"] == "dagster"
    bridge = find(DEPLOY / "bridge" / "deployment.yaml", "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert bridge["image"] == f"{dep['image']['repository']}:{dep['image']['tag']}"  # one image for both
    url = next(e["value"] for e in bridge["env"] if e["name"] == "KUBETASK_BRIDGE_DAGSTER_URL")
    assert url.startswith("http://dagster-dagster-webserver.dagster.svc")  # release `dagster` in namespace `dagster`
    limits = q.get("tagConcurrencyLimits") or []
    assert all(limit["key"].startswith("kubetask.io/") for limit in limits)


# --- images ------------------------------------------------------------------------------------------


def test_dockerfiles_build_small_non_root_images():
    main = (REPO / "Dockerfile").read_text()
    # a public base for real users, the local offline base here (deploy/local/images)
    assert re.search(r"^ARG BASE=python:3\.11-slim$", main, re.M) and re.search(r"^FROM \$\{BASE\}", main, re.M)
    assert "pip install --constraint constraints.txt ." in main and "dagster-postgres==0.29.*" in main
    assert re.search(r"^USER 10001:10001$", main, re.M)
    assert 'CMD ["python", "-m", "crd_bridge"]' in main
    copied = {src for line in re.findall(r"^COPY (.+)$", main, re.M) for src in line.split()[:-1]}
    assert {"pyproject.toml", "README.md", "kubetask", "kubetask_dagster", "crd_bridge", "workspace.yaml"} <= copied
    assert all((REPO / src).exists() for src in copied)
    echo = (REPO / "agents" / "echo" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=debian:bookworm-slim$", echo, re.M) and re.search(r"^USER 10001:10001$", echo, re.M)
    assert 'ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]' in echo
    assert os.access(ECHO, os.X_OK)


def run_echo(workspace: Path | None, **env: str) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ["PATH"], **env}
    if workspace is not None:
        full["WORKSPACE_DIR"] = str(workspace)
    return subprocess.run([shutil.which("sh") or "/bin/sh", str(ECHO)], env=full, capture_output=True, text=True, timeout=30)


def test_echo_agent_prints_every_file_sorted_between_the_markers(tmp_path):
    (tmp_path / "task.md").write_text("# Task\nUpdate the deps.\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("no trailing newline")
    (tmp_path / "a.md").write_text("first\n")
    (tmp_path / "empty.txt").write_text("")
    result = run_echo(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "=== Task Content ===\n"
        f"--- File: {tmp_path}/a.md ---\nfirst\n"
        f"--- File: {tmp_path}/docs/b.md ---\nno trailing newline\n"
        f"--- File: {tmp_path}/empty.txt ---\n"
        f"--- File: {tmp_path}/task.md ---\n# Task\nUpdate the deps.\n"
        "=== Credentials ===\n"
        "=== Task Completed ===\n"
    )


def test_echo_agent_reads_a_whole_configmap_mount_once(tmp_path):
    # A ConfigMap volume mounted without subPath: key -> ..data/key -> ..<timestamp>/key
    stamp = tmp_path / "..2030_01_01_00_00_00.1"
    stamp.mkdir()
    (stamp / "task.md").write_text("from a configmap\n")
    (tmp_path / "..data").symlink_to(stamp.name)
    (tmp_path / "task.md").symlink_to("..data/task.md")
    result = run_echo(tmp_path)
    assert result.stdout == (
        f"=== Task Content ===\n--- File: {tmp_path}/task.md ---\nfrom a configmap\n=== Credentials ===\n=== Task Completed ===\n"
    )


def test_echo_agent_without_a_workspace_and_with_a_chosen_exit_code(tmp_path):
    result = run_echo(tmp_path / "absent", ECHO_EXIT_CODE="3")
    assert result.returncode == 3
    assert result.stdout == "=== Task Content ===\n=== Credentials ===\n=== Task Completed ===\n"


@pytest.mark.skipif(not shutil.which("bash"), reason="bash not installed")
def test_echo_agent_hands_its_result_document_to_kubetask(tmp_path):
    workspace, result_file = tmp_path / "ws", tmp_path / "termination-log"
    workspace.mkdir()
    document = '{"pullRequests": [{"url": "https://example.com/pr/1"}]}'
    (workspace / ".result.json").write_text(document)
    result = run_echo(workspace, KUBETASK_RESULT_FILE=str(result_file))
    assert result.returncode == 0, result.stderr
    assert result_file.read_text() == document
    (workspace / ".result.json").unlink()
    result_file.unlink()
    assert run_echo(workspace, KUBETASK_RESULT_FILE=str(result_file)).returncode == 0
    assert not result_file.exists()  # no document: nothing written


def test_echo_agent_is_posix_sh(tmp_path):
    # alpine has no bash: the script must not need it (bash --posix catches the common bashisms)
    (tmp_path / "t.md").write_text("x\n")
    result = subprocess.run(["bash", "--posix", str(ECHO)], env={"PATH": os.environ["PATH"], "WORKSPACE_DIR": str(tmp_path)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "--- File:" in result.stdout
    assert ECHO.read_text().startswith("#!/bin/sh\n")


def test_echo_agent_reports_credentials_by_name_and_mode_never_by_value(tmp_path):
    secret_file = tmp_path / "creds" / "token"
    secret_file.parent.mkdir()
    secret_file.write_text("file-secret-value")
    secret_file.chmod(0o600)
    result = run_echo(tmp_path / "ws", API_TOKEN="env-secret-value", KUBETASK_CREDENTIAL_ENV="API_TOKEN,ABSENT",
                      KUBETASK_CREDENTIAL_PATHS=f"{secret_file},{tmp_path}/gone")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "env API_TOKEN set" in lines and "env ABSENT unset" in lines
    assert f"file {secret_file} mode 600 owner {os.getuid()}:{os.getgid()} readable yes" in lines
    assert f"file {tmp_path}/gone missing" in lines
    assert "secret-value" not in result.stdout


def test_echo_agent_runs_its_script_and_exits_with_the_exit_code_file(tmp_path):
    (tmp_path / ".run").write_text("echo ran in $(pwd)\nexit 4\n")
    result = run_echo(tmp_path)
    assert result.returncode == 4 and f"ran in {tmp_path}" in result.stdout
    (tmp_path / ".exit-code").write_text("3\n")
    assert run_echo(tmp_path).returncode == 3  # .exit-code wins over the script's status
    (tmp_path / ".exit-code").write_text("three")
    bad = run_echo(tmp_path)
    assert bad.returncode == 2 and ".exit-code" in bad.stderr


def test_echo_agent_ends_on_term_after_its_term_delay(tmp_path):
    import signal
    import time

    (tmp_path / ".sleep").write_text("60")
    (tmp_path / ".term-delay").write_text("1")
    proc = subprocess.Popen([shutil.which("sh") or "/bin/sh", str(ECHO)], env={"PATH": os.environ["PATH"], "WORKSPACE_DIR": str(tmp_path)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 143
    assert 0.9 < time.monotonic() - started < 5
