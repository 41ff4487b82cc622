"""Agents in real containers: the local real node (kubelet, containerd, runc) runs the images that
deploy/local/images builds here, and each test reads the agent's real log through the kubelet.

Every Task goes through the public API: a WorkspaceConfig that selects and tolerates the real node
(kubetask.io/local-node=real) with the echo agent, whose log shows the files it was given, the
credentials it got (names and modes, never values) and the result of `/workspace/.run`.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import trustme
import yaml
from kt_helpers import ON_THE_REAL_NODE, condition, get, inline, jobs, real_workspace, task, wait_phase

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = ROOT / "deploy" / "local" / "cluster"
NODE = "localhost"
TOOLS_IMAGE = "localhost/kubetask-test-tools:dev"
PROJECT_IMAGE = "localhost/kubetask-dagster:dev"


@pytest.fixture(scope="module")
def real_node(cluster):
    """The session cluster's real node, Ready; fails (never skips) when it did not start."""
    out = cluster.kubectl("get", "node", NODE, "-o", "json", check=False)
    if out.returncode != 0:
        pytest.fail(f"the session cluster has no real node ({out.stderr.strip()}); see `deploy/local/cluster start`'s log "
                    f"(KUBETASK_REAL_NODE, root, swap, another real node on this machine)")
    node = json.loads(out.stdout)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}.get("Ready")
    assert ready == "True", node["status"]["conditions"]
    return node


def apply(kubectl, namespace, *objects):
    for obj in objects:
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))


def secret(name: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


def config_map(name: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def finish(kubectl, wait_for, namespace, name, timeout=120) -> dict:
    return wait_phase(kubectl, wait_for, namespace, name, {"Completed", "Failed", "Stopped"}, timeout=timeout)


def agent_log(kubectl, namespace, obj) -> str:
    """The agent container's log, read from the kubelet through kube-apiserver."""
    return kubectl("logs", "-n", namespace, obj["status"]["podName"], "-c", "agent").stdout


def test_the_agent_reads_its_files_byte_for_byte(real_node, kubectl, wait_for, namespace, bridge):
    brief = "Line one\n  indented, with trailing spaces   \nno newline at the end"
    apply(kubectl, namespace, real_workspace(), config_map("guide", {"style.md": "Use tabs.\n"}),
          secret("private", {"brief.md": "top secret plan\n"}))
    apply(kubectl, namespace, task("files", [
        inline("/workspace/task.md", "Fix the bug.\n"),
        inline("/workspace/task.md", brief),
        {"type": "File", "file": {"filePath": "/workspace/guide/style.md", "source": {"configMapKeyRef": {"name": "guide", "key": "style.md"}}}},
        {"type": "File", "file": {"filePath": "/workspace/private.md", "source": {"secretKeyRef": {"name": "private", "key": "brief.md"}}}},
    ]))
    obj = finish(kubectl, wait_for, namespace, "files")
    assert obj["status"]["phase"] == "Completed", obj["status"].get("message")
    log = agent_log(kubectl, namespace, obj)
    aggregated = f'<context index="0">\nFix the bug.\n\n</context>\n\n<context index="1">\n{brief}\n</context>'
    assert log.startswith(
        "=== Task Content ===\n"
        "--- File: /workspace/guide/style.md ---\nUse tabs.\n"
        "--- File: /workspace/private.md ---\ntop secret plan\n"
        f"--- File: /workspace/task.md ---\n{aggregated}\n"
        "=== Credentials ===\n"
    ), log
    pod = json.loads(kubectl("get", "pod", obj["status"]["podName"], "-n", namespace, "-o", "json").stdout)
    assert pod["spec"]["nodeName"] == NODE and pod["spec"]["hostNetwork"] is True


def test_credentials_arrive_as_an_env_var_and_a_file_the_non_root_agent_reads(real_node, kubectl, wait_for, namespace, bridge):
    value = "cr3d-real-node-value-77"
    apply(kubectl, namespace, secret("api", {"token": value}), real_workspace(credentials=[
        {"secretRef": {"name": "api", "key": "token"}, "env": "API_TOKEN", "mountPath": "/home/agent/api-token"},
    ]))
    apply(kubectl, namespace, task("creds"))
    obj = finish(kubectl, wait_for, namespace, "creds")
    assert obj["status"]["phase"] == "Completed", obj["status"].get("message")
    log = agent_log(kubectl, namespace, obj)
    assert "env API_TOKEN set" in log, log
    [line] = [x for x in log.splitlines() if x.startswith("file /home/agent/api-token ")]
    assert line.endswith("readable yes"), line
    mode = line.split(" mode ")[1].split()[0]
    assert int(mode, 8) & 0o007 == 0, f"the credential file is readable by others: {line}"
    assert value not in log


class _GitHttp(http.server.BaseHTTPRequestHandler):
    """Smart HTTP for one bare repository (git http-backend as CGI), behind basic auth."""

    root: Path
    credentials: str

    def _serve(self):
        if self.headers.get("Authorization") != f"Basic {self.credentials}":
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {"GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path, "QUERY_STRING": query,
               "REQUEST_METHOD": self.command, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
               "REMOTE_USER": "agent", "PATH": os.environ["PATH"]}
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(": ")
            if name.lower() == "status":
                status = int(value.split()[0])
            else:
                headers.append((name, value))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _serve  # noqa: N815 - http.server's naming

    def log_message(self, *args):
        pass


@pytest.fixture
def git_server(tmp_path):
    """A repository with branch `feature` (README.md "feature work\\n") on https://127.0.0.1, user agent / s3cret.

    Yields the URL and the PEM of the certificate authority that signed the server's certificate.
    """
    work, bare = tmp_path / "work", tmp_path / "srv" / "app.git"
    git = lambda *a, cwd=work: subprocess.run(["git", *a], cwd=cwd, check=True, capture_output=True)  # noqa: E731
    work.mkdir()
    git("init", "-q", "-b", "main")
    (work / "README.md").write_text("main line\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "main")
    git("checkout", "-q", "-b", "feature")
    (work / "README.md").write_text("feature work\n")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "feature")
    bare.parent.mkdir()
    git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)
    handler = type("Handler", (_GitHttp,), {"root": bare.parent, "credentials": base64.b64encode(b"agent:s3cret").decode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    authority = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(tls)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}/app.git", authority.cert_pem.bytes().decode()
    server.shutdown()


def test_a_git_context_clones_a_branch_over_https_with_credentials(real_node, kubectl, wait_for, namespace, bridge, git_server):
    url, ca_pem = git_server
    apply(kubectl, namespace, real_workspace(), secret("git-creds", {"username": "agent", "password": "s3cret", "ca.crt": ca_pem}))
    checkout = {"type": "Git", "git": {"repository": url, "ref": "feature", "path": "/workspace/app",
                                       "secretRef": {"name": "git-creds"}}}
    apply(kubectl, namespace, task("clone", [inline("/workspace/task.md", "Read the app."), checkout]))
    obj = finish(kubectl, wait_for, namespace, "clone")
    assert obj["status"]["phase"] == "Completed", obj["status"].get("message")
    log = agent_log(kubectl, namespace, obj)
    assert "--- File: /workspace/app/README.md ---\nfeature work\n" in log, log
    assert "s3cret" not in json.dumps(jobs(kubectl, namespace))

    wrong = {**checkout, "git": {**checkout["git"], "ref": "no-such-branch"}}
    apply(kubectl, namespace, task("wrong-ref", [wrong]))
    obj = finish(kubectl, wait_for, namespace, "wrong-ref")
    assert obj["status"]["phase"] == "Failed", obj["status"]
    assert condition(obj, "Succeeded")["reason"] == "InitContainerFailed", obj["status"]
    assert "git-clone-0" in obj["status"]["message"], obj["status"]

    # Without the authority the server's certificate is not trusted: TLS verification is on.
    apply(kubectl, namespace, secret("no-ca", {"username": "agent", "password": "s3cret"}))
    untrusted = {**checkout, "git": {**checkout["git"], "secretRef": {"name": "no-ca"}}}
    apply(kubectl, namespace, task("untrusted", [untrusted]))
    obj = finish(kubectl, wait_for, namespace, "untrusted")
    assert obj["status"]["phase"] == "Failed", obj["status"]
    assert condition(obj, "Succeeded")["reason"] == "InitContainerFailed", obj["status"]


def test_the_agents_result_reaches_the_task_status_and_dagster(real_node, kubectl, wait_for, namespace, bridge, dagster):
    """The echo agent writes /workspace/.result.json to $KUBETASK_RESULT_FILE, its termination message: the
    Task's status.result has it, `kubectl get task` shows the pull request, Dagster's materialization links it."""
    pr = "https://git.example.com/org/app/pull/42"
    document = {"summary": "Bumped three dependencies.", "pullRequests": [{"url": pr, "branch": "deps", "commit": "abc1234"}],
                "usage": {"inputTokens": 1500, "outputTokens": 420, "costUSD": 0.037, "model": "test-model"}}
    apply(kubectl, namespace, real_workspace())
    apply(kubectl, namespace, task("reported", [inline("/workspace/.result.json", json.dumps(document))]))
    obj = finish(kubectl, wait_for, namespace, "reported")
    assert obj["status"]["phase"] == "Completed", obj["status"].get("message")
    assert obj["status"]["result"] == document
    assert condition(obj, "Result")["reason"] == "ResultRecorded"
    assert pr in kubectl("get", "task", "reported", "-n", namespace).stdout  # the PR column
    events = dagster.event_log_text(obj["status"]["dagsterRunId"])
    assert pr in events and "0.037" in events and "test-model" in events

    apply(kubectl, namespace, task("garbled", [inline("/workspace/.result.json", "{not json")]))
    obj = finish(kubectl, wait_for, namespace, "garbled")
    assert obj["status"]["phase"] == "Completed", obj["status"]  # the outcome follows the exit code
    result = condition(obj, "Result")
    assert (result["status"], result["reason"]) == ("False", "InvalidResult") and "not JSON" in result["message"]
    assert "result" not in obj["status"]


def test_the_tools_image_puts_its_tools_on_path(real_node, kubectl, wait_for, namespace, bridge):
    apply(kubectl, namespace, real_workspace(toolsImage=TOOLS_IMAGE))
    apply(kubectl, namespace, task("tools", [inline("/workspace/.run", "kubetask-hello\n")]))
    obj = finish(kubectl, wait_for, namespace, "tools")
    assert obj["status"]["phase"] == "Completed", obj["status"].get("message")
    assert "hello from the tools image" in agent_log(kubectl, namespace, obj)


def test_the_agents_exit_code_ends_the_task(real_node, kubectl, wait_for, namespace, bridge):
    apply(kubectl, namespace, real_workspace(), task("three", [inline("/workspace/.exit-code", "3")]))
    obj = finish(kubectl, wait_for, namespace, "three")
    assert obj["status"]["phase"] == "Failed" and obj["status"]["exitCode"] == 3, obj["status"]
    assert condition(obj, "Succeeded")["reason"] == "AgentFailed"


def test_what_the_agent_prints_of_its_secrets_is_redacted_everywhere(real_node, kubectl, wait_for, namespace, bridge, dagster):
    value, brief = "sk-real-leak-0123456789abcdef", "the-secret-brief-content-42"
    apply(kubectl, namespace, secret("llm", {"key": value}), secret("private", {"brief": brief}),
          real_workspace(credentials=[{"secretRef": {"name": "llm", "key": "key"}, "env": "LLM_KEY"}]))
    leak = 'echo "key=$LLM_KEY"; printf %s "$LLM_KEY" | base64; exit 1\n'
    apply(kubectl, namespace, task("leaky", [
        inline("/workspace/.run", leak),
        {"type": "File", "file": {"filePath": "/workspace/brief.md", "source": {"secretKeyRef": {"name": "private", "key": "brief"}}}},
    ]))
    obj = finish(kubectl, wait_for, namespace, "leaky")
    raw = agent_log(kubectl, namespace, obj)
    assert f"key={value}" in raw and brief in raw  # the agent really printed them
    encoded = base64.b64encode(value.encode()).decode()
    run = dagster.run(obj["status"]["dagsterRunId"])
    seen = {
        "status": json.dumps(obj["status"]),
        "events": kubectl("get", "events", "-n", namespace, "-o", "json").stdout,
        "dagster events": dagster.event_log_text(obj["status"]["dagsterRunId"]),
        "dagster run": json.dumps(run),
    }
    for where, text in seen.items():
        for secret_text in (value, encoded, brief):
            assert secret_text not in text, f"{secret_text!r} reached the {where}"
    assert "key=" in seen["dagster events"], "the log tail should be in Dagster, masked"

    # The whole log outlives the pod: Dagster keeps it with the step's stdout, masked, and the status says where.
    kubectl("delete", "job", obj["status"]["jobName"], "-n", namespace, "--wait=true")
    kept = dagster.compute_logs(obj["status"]["dagsterRunId"])
    assert "===== agent log of Task" in kept and "key=" in kept, kept[-2000:]
    # the log's own lines, not a client's repr of its bytes ("b'...\\n...'")
    assert "\n=== Task Content ===\n" in kept and "\n===== end of the agent log =====" in kept, kept[-2000:]
    for secret_text in (value, encoded, brief):
        assert secret_text not in kept
    assert obj["status"]["agentLog"].startswith(f"Dagster run {obj['status']['dagsterRunId']}, step run_agent")


def test_a_timeout_kills_the_agent_and_stop_deletes_its_container(real_node, kubectl, wait_for, namespace, bridge):
    apply(kubectl, namespace, real_workspace(), task("slow", [inline("/workspace/.sleep", "600")], timeout="5s"))
    obj = finish(kubectl, wait_for, namespace, "slow", timeout=90)
    assert obj["status"]["phase"] == "Failed" and condition(obj, "Succeeded")["reason"] == "Timeout", obj["status"]

    apply(kubectl, namespace, task("stopme", [inline("/workspace/.sleep", "600")]))
    running = wait_for(lambda: (o := get(kubectl, namespace, "task", "stopme")) and (o.get("status") or {}).get("podName")
                       and _container_running(kubectl, namespace, o["status"]["podName"]) and o, timeout=90,
                       what="the agent container running")
    kubectl("annotate", "task", "stopme", "-n", namespace, "kubetask.io/stop=true")
    obj = finish(kubectl, wait_for, namespace, "stopme")
    assert obj["status"]["phase"] == "Stopped", obj["status"]
    pod = running["status"]["podName"]
    wait_for(lambda: kubectl("get", "pod", pod, "-n", namespace, check=False).returncode != 0, timeout=60,
             what="the agent pod (and its container) gone")


def _container_running(kubectl, namespace, pod) -> bool:
    out = kubectl("get", "pod", pod, "-n", namespace, "-o", "json", check=False)
    if out.returncode != 0:
        return False
    statuses = json.loads(out.stdout).get("status", {}).get("containerStatuses") or []
    return any("running" in (s.get("state") or {}) for s in statuses)


def test_the_projects_image_runs_the_bridge_and_loads_the_definitions(real_node, cluster, kubectl, wait_for, namespace):
    """The image from the root Dockerfile, as a pod on the real node (host network, the cluster's kubeconfig)."""
    kubeconfig = Path(cluster.kubeconfig).read_text()
    apply(kubectl, namespace, secret("kubeconfig", {"config": kubeconfig}))
    script = "python -m crd_bridge --help >/dev/null && dagster definitions validate -m kubetask_dagster.definitions"
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "image"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            **ON_THE_REAL_NODE, "hostNetwork": True, "restartPolicy": "Never",
            "containers": [{"name": "main", "image": PROJECT_IMAGE, "imagePullPolicy": "Never",
                            "command": ["sh", "-c", script],
                            "env": [{"name": "KUBECONFIG", "value": "/etc/kube/config"}],
                            "volumeMounts": [{"name": "kube", "mountPath": "/etc/kube", "readOnly": True}]}],
            "volumes": [{"name": "kube", "secret": {"secretName": "kubeconfig", "defaultMode": 0o444}}],
        }}},
    }
    apply(kubectl, namespace, job)
    done = wait_for(lambda: (j := json.loads(kubectl("get", "job", "image", "-n", namespace, "-o", "json").stdout))
                    and any(c["status"] == "True" for c in j.get("status", {}).get("conditions", [])
                            if c["type"] in ("Complete", "Failed")) and j, timeout=180, what="the image's Job")
    log = kubectl("logs", "-n", namespace, "job/image", check=False).stdout
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in done["status"]["conditions"]), log


def _running_agents(kubectl, namespace) -> set[str]:
    pods = json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    return {p["metadata"]["name"] for p in pods for c in p.get("status", {}).get("containerStatuses") or []
            if c["name"] == "agent" and "running" in (c.get("state") or {})}


def test_max_concurrent_tasks_holds_while_stopped_agents_take_their_grace_period(real_node, kubectl, wait_for, namespace, bridge):
    """BatchRun a runs the limit's two agents, b waits; stopping a must not start b's agents until
    a's have really ended (each takes 15 s to shut down)."""
    slow = [inline("/workspace/.sleep", "600"), inline("/workspace/.term-delay", "15")]
    apply(kubectl, namespace, real_workspace(maxConcurrentTasks=2))

    def run(name):
        return {"apiVersion": "kubetask.io/v1alpha1", "kind": "BatchRun", "metadata": {"name": name},
                "spec": {"parallelism": 2, "batchSpec": {"commonContext": slow, "variableContexts": [[], []]}}}

    apply(kubectl, namespace, run("a"))
    wait_for(lambda: len(_running_agents(kubectl, namespace)) == 2, timeout=120, what="a's two agents running")
    first = _running_agents(kubectl, namespace)
    apply(kubectl, namespace, run("b"))
    wait_for(lambda: any((get(kubectl, namespace, "task", f"b-task-{i}") or {}).get("status", {}).get("phase") == "Queued"
                         for i in range(2)), timeout=60, what="b's Tasks queued behind the limit")
    kubectl("annotate", "batchrun", "a", "-n", namespace, "kubetask.io/stop=true")
    most = 0
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        running = _running_agents(kubectl, namespace)
        most = max(most, len(running))
        if running and not running & first:  # a's agents have ended and b's run
            break
        time.sleep(0.2)
    assert most <= 2, f"{most} agents ran at once with maxConcurrentTasks 2"
    assert running and not running & first, f"b's agents never started: {running}"


def test_stopping_the_node_leaves_nothing_behind(real_node, cluster, kubectl, wait_for, namespace, bridge):
    """Stop with an agent still running: no process, mount, cgroup, tunable or fixed path of the node
    remains; then the node starts again for the tests after this one."""
    apply(kubectl, namespace, real_workspace(), task("left-running", [inline("/workspace/.sleep", "600")]))
    wait_for(lambda: (o := get(kubectl, namespace, "task", "left-running")) and (o.get("status") or {}).get("podName")
             and _container_running(kubectl, namespace, o["status"]["podName"]), timeout=90, what="an agent running")
    env = cluster.env
    run = Path(env["KUBETASK_CLUSTER_RUN"])
    before = {k: v for k, v in (line.split("=", 1) for line in (run / "node" / "sysctl.before").read_text().split())}
    created = (run / "node" / "created").read_text().split()
    subprocess.run([str(CLUSTER_SCRIPT), "node-stop"], env=env, check=True, capture_output=True)
    try:
        # zombies (state Z) have ended: only their exit status waits for PID 1 to reap it
        listing = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout.splitlines()
        procs = "\n".join(line.split(None, 1)[-1] for line in listing if not line.lstrip().startswith("Z"))
        assert str(run / "node") not in procs, procs
        assert "containerd-shim" not in procs and "/pause" not in procs and "entrypoint.sh" not in procs, procs
        mounts = Path("/proc/self/mountinfo").read_text()
        assert str(run / "node") not in mounts and "containerd-root" not in mounts
        assert not list(Path("/sys/fs/cgroup").glob("*/kubetask-real-node")), "cgroups left"
        for name, value in before.items():
            assert subprocess.run(["sysctl", "-n", name], capture_output=True, text=True).stdout.strip() == value, name
        for path in created:
            assert not Path(path).exists(), path
        assert "KUBE-" not in subprocess.run(["sh", "-c", "iptables-save 2>/dev/null || true"], capture_output=True, text=True).stdout
    finally:
        subprocess.run([str(CLUSTER_SCRIPT), "node-start"], env=env, check=True, capture_output=True)
    wait_for(lambda: json.loads(kubectl("get", "node", NODE, "-o", "json").stdout)["status"]["conditions"][-1]["status"] == "True",
             timeout=60, what="the real node Ready again")
