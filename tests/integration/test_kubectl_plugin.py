"""`kubectl kubetask` against the real control plane, Dagster and the bridge: the plugin runs as a process
(`python -m kubectl_kubetask`, and through kubectl itself, which finds `kubectl-kubetask` on PATH).

What kwok can prove about logs: its pods run no program, but kwok serves one canned log for every pod
(deploy/local/cluster, ClusterLogs), through the API server's pods/log like a kubelet. The run's step
reads it and keeps it in its stdout, so once the pod is deleted the plugin's fallback reads that real
copy from Dagster's compute log over GraphQL.
"""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from kt_helpers import TERMINAL, apply, batchrun, get, tasks_of, wait_batchrun, wait_phase, workspace
from kt_helpers import task as task_obj

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT_DIR = Path(sys.executable).parent
KWOK_LOG_LINE = "(kwok fake pod: no program runs; every pod of this local cluster shows this log)"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBETASK_DAGSTER_URL"}
    return env


def plugin(cluster, namespace: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`python -m kubectl_kubetask ARGS -n NAMESPACE --kubeconfig ...` (flags after the command, as kubectl passes them)."""
    cmd = [sys.executable, "-m", "kubectl_kubetask", *args, "-n", namespace, "--kubeconfig", cluster.kubeconfig]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=_env())


def kubectl_plugin_cmd(cluster, namespace: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """`kubectl kubetask ARGS` with the console script's directory on PATH: kubectl finds the plugin itself."""
    env = _env()
    env["PATH"] = os.pathsep.join([str(CONSOLE_SCRIPT_DIR), cluster.bin_dir, env.get("PATH", "")])
    exe = Path(cluster.bin_dir) / "kubectl"
    cmd = [str(exe) if exe.exists() else "kubectl", "kubetask", *args, "-n", namespace, "--kubeconfig", cluster.kubeconfig]
    return cmd, env


def via_kubectl(cluster, namespace: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    cmd, env = kubectl_plugin_cmd(cluster, namespace, *args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip()


def delete_pods(kubectl, wait_for, namespace: str, task: str) -> None:
    kubectl("delete", "pod", "-n", namespace, "-l", f"kubetask.io/task={task}", "--wait=true", "--timeout=60s")
    wait_for(lambda: not json.loads(kubectl("get", "pods", "-n", namespace, "-l", f"kubetask.io/task={task}",
                                            "-o", "json").stdout)["items"], timeout=60, what=f"the pods of {task} gone")


def kept_block_in_files(dagster, run_id: str, namespace: str, name: str, attempt: int) -> str:
    """The block as the compute log files hold it (read from disk, beside the plugin's GraphQL read)."""
    text = dagster.compute_logs(run_id)
    head = f"===== agent log of Task {namespace}/{name}, attempt {attempt}, pod "
    start = text.index("\n", text.rindex(head)) + 1
    return text[start:text.index("===== end of the agent log =====\n", start)]


def test_describe_logs_and_open_of_a_completed_task_then_the_kept_log_once_its_pod_is_gone(
    cluster, kubectl, wait_for, namespace, bridge, dagster
):
    apply(kubectl, namespace, workspace(), task_obj("hello"))
    obj = wait_phase(kubectl, wait_for, namespace, "hello", {"Completed", "Failed"})
    assert obj["status"]["phase"] == "Completed"
    st = obj["status"]
    run_id, pod = st["dagsterRunId"], st["podName"]

    # describe: Task -> Job -> pod -> Dagster run, the run's status read from Dagster (URL from status.dagsterRunUrl)
    seen: list[subprocess.CompletedProcess[str]] = []

    def described():
        seen.append(plugin(cluster, namespace, "describe", "hello"))
        # The Task is Completed once its pod terminates; the Job controller counts the pod a moment later.
        done = ("status:     SUCCESS", "pods:       active 0, succeeded 1, failed 0")
        return seen[-1].returncode == 0 and all(d in seen[-1].stdout for d in done) and seen[-1]

    try:
        text = wait_for(described, timeout=60, what="describe showing the run's SUCCESS and the Job's count").stdout
    except TimeoutError:
        raise AssertionError(f"describe never showed SUCCESS and the counted pod: {seen[-1]}") from None
    for expected in (f"Task {namespace}/hello", "phase:      Completed (attempt 1)", "Ready:      True  Completed",
                     "Job hello-job-1", "pods:       active 0, succeeded 1, failed 0", "suspended:  no",
                     f"Pod {pod}", "agent:      terminated: exit code 0", f"Dagster run {run_id}", st["dagsterRunUrl"]):
        assert expected in text, text
    print(text)

    # logs: kwok's canned log of the agent container, read through the API server
    live = plugin(cluster, namespace, "logs", "hello")
    assert live.returncode == 0 and "=== Task Content ===" in live.stdout and KWOK_LOG_LINE in live.stdout, live
    assert live.stderr == ""  # from the pod: no note about Dagster
    followed = via_kubectl(cluster, namespace, "logs", "hello", "-f", "--attempt", "1")
    assert followed.returncode == 0 and followed.stdout == live.stdout, followed

    opened = plugin(cluster, namespace, "open", "hello", "--print-only")
    assert (opened.returncode, opened.stdout) == (0, st["dagsterRunUrl"] + "\n"), opened

    # the pod gone: the copy the step kept in its stdout, read over Dagster's GraphQL (capturedLogs)
    delete_pods(kubectl, wait_for, namespace, "hello")
    kept = plugin(cluster, namespace, "logs", "hello")
    assert kept.returncode == 0, kept
    # what the step kept, as Dagster holds it: the agent's log as it was while the pod lived
    assert kept.stdout == kept_block_in_files(dagster, run_id, namespace, "hello", 1) and KWOK_LOG_LINE in kept.stdout
    assert kept.stdout.strip() == live.stdout.strip(), (kept.stdout, live.stdout)
    assert f"kept in Dagster run {run_id}, step run_agent, pod {pod}" in kept.stderr, kept.stderr

    refused = closed_port()
    gone = one_line_error(plugin(cluster, namespace, "logs", "hello", "--dagster-url", f"http://127.0.0.1:{refused}"))
    assert gone == f"error: cannot reach Dagster at http://127.0.0.1:{refused}: connection refused " \
                   "(set --dagster-url or KUBETASK_DAGSTER_URL)"
    away = plugin(cluster, namespace, "describe", "hello", "--dagster-url", f"http://127.0.0.1:{refused}")
    assert away.returncode == 0 and f"status:     unreachable (Dagster at http://127.0.0.1:{refused})" in away.stdout
    assert "Pod: none (gone, or not created yet)" in away.stdout

    one_line_error(plugin(cluster, namespace, "logs", "hello", "--attempt", "2"))  # there is no attempt 2
    # A Task whose log was never kept (status.agentLog empty) and whose pod is gone: the plain "no log" error.
    kubectl("patch", "task", "hello", "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"agentLog": None}}))
    assert one_line_error(plugin(cluster, namespace, "logs", "hello")) == (
        f"error: no log of Task 'hello' attempt 1 in namespace '{namespace}': no pod of attempt 1 is left, "
        "and status.agentLog names no kept copy")


def test_pause_and_resume_of_a_batchrun_take_effect(cluster, kubectl, wait_for, namespace, bridge):
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-duration-ms": "3000"}),
          batchrun("held", n=6, parallelism=2))
    wait_for(lambda: sum((t.get("status") or {}).get("phase") in ("Running", "Completed")
                         for t in tasks_of(kubectl, namespace, "held").values()) >= 2, timeout=120, what="two Tasks dispatched")
    paused = plugin(cluster, namespace, "pause", "held")
    assert paused.returncode == 0 and paused.stdout.startswith(f"BatchRun {namespace}/held: paused"), paused
    assert get(kubectl, namespace, "batchrun", "held")["metadata"]["annotations"]["kubetask.io/pause"] == "true"
    wait_batchrun(kubectl, wait_for, namespace, "held", {"Paused"}, timeout=30)

    resumed = via_kubectl(cluster, namespace, "resume", "held")
    assert resumed.returncode == 0 and resumed.stdout.startswith(f"BatchRun {namespace}/held: resumed"), resumed
    assert "kubetask.io/pause" not in (get(kubectl, namespace, "batchrun", "held")["metadata"].get("annotations") or {})
    wait_batchrun(kubectl, wait_for, namespace, "held", {"Running"} | TERMINAL, timeout=30)
    obj = wait_batchrun(kubectl, wait_for, namespace, "held", TERMINAL, timeout=180)
    assert obj["status"]["phase"] == "Completed" and obj["status"]["progress"]["completed"] == 6, obj["status"]


def test_stop_finds_a_batchrun_or_a_task_by_name_and_stops_it(cluster, kubectl, wait_for, namespace, bridge):
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-outcome": "hang"}),
          batchrun("stopme", n=4, parallelism=2), task_obj("lone"))
    wait_for(lambda: sum((t.get("status") or {}).get("phase") == "Running"
                         for t in tasks_of(kubectl, namespace, "stopme").values()) == 2, timeout=90, what="two Tasks running")
    wait_phase(kubectl, wait_for, namespace, "lone", {"Running"})

    stopped = via_kubectl(cluster, namespace, "stop", "stopme")  # no Task is named stopme: the BatchRun
    assert stopped.returncode == 0 and stopped.stdout.startswith(f"BatchRun {namespace}/stopme: stop requested"), stopped
    obj = wait_batchrun(kubectl, wait_for, namespace, "stopme", TERMINAL, timeout=90)
    assert obj["status"]["phase"] == "Stopped", obj["status"]

    lone = plugin(cluster, namespace, "stop", "lone")
    assert lone.returncode == 0 and lone.stdout.startswith(f"Task {namespace}/lone: stop requested"), lone
    assert wait_phase(kubectl, wait_for, namespace, "lone", TERMINAL)["status"]["phase"] == "Stopped"
    again = plugin(cluster, namespace, "stop", "batchrun/stopme")
    assert again.returncode == 0 and "has already ended (Stopped): nothing to stop" in again.stdout, again


def test_rerun_failed_runs_only_the_failed_task_again(cluster, kubectl, wait_for, namespace, bridge, steer):
    steer(["again-task-1"], {"kubetask.io/test-outcome": "fail"}, attempts=[1])  # the rerun's attempt 2 succeeds
    apply(kubectl, namespace, workspace(), batchrun("again", n=3, parallelism=3))
    first = wait_batchrun(kubectl, wait_for, namespace, "again", TERMINAL, timeout=120)
    assert first["status"]["phase"] == "Failed" and first["status"]["progress"]["failed"] == 1, first["status"]

    asked = plugin(cluster, namespace, "rerun", "again", "--failed")
    assert asked.returncode == 0 and "rerun of its failed Tasks requested" in asked.stdout, asked
    obj = wait_for(lambda: (o := get(kubectl, namespace, "batchrun", "again"))["status"].get("dagsterRunId")
                   != first["status"]["dagsterRunId"] and o["status"]["phase"] in TERMINAL and o,
                   timeout=120, what="the rerun to finish")
    assert obj["status"]["phase"] == "Completed", obj["status"]
    attempts = {n: t["status"]["attempt"] for n, t in tasks_of(kubectl, namespace, "again").items()}
    assert attempts == {"again-task-0": 1, "again-task-1": 2, "again-task-2": 1}


def _read_all(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            return
        if not data:
            return
        into.append(data)


def test_watch_of_a_20_task_batchrun_prints_progress_and_ends_with_the_outcome(
    cluster, kubectl, wait_for, namespace, bridge, dagster
):
    apply(kubectl, namespace, workspace(pod_labels={"kubetask.io/test-duration-ms": "1500"}),
          batchrun("twenty", n=20, parallelism=5))
    piped = subprocess.Popen([sys.executable, "-m", "kubectl_kubetask", "watch", "twenty", "-n", namespace,
                              "--kubeconfig", cluster.kubeconfig], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=REPO, env=_env())
    # the same watch on a terminal, through kubectl: one line redrawn with \r
    cmd, env = kubectl_plugin_cmd(cluster, namespace, "watch", "twenty")
    master, slave = pty.openpty()
    on_tty = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, cwd=REPO, env=env)
    os.close(slave)
    screen: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(master, screen), daemon=True)
    reader.start()
    out, err = piped.communicate(timeout=300)
    assert on_tty.wait(timeout=60) == 0, on_tty.stderr.read() if on_tty.stderr else ""
    reader.join(timeout=10)
    os.close(master)
    print(out)

    assert piped.returncode == 0, (out, err)
    lines = out.splitlines()
    progress = [line for line in lines if "pending " in line]
    assert len(progress) >= 3 and len(set(progress)) == len(progress), out  # a line per change, none repeated
    assert progress[-1].startswith("Completed") and " 20/20 " in progress[-1] and "completed 20" in progress[-1]
    assert any(" running " in p and "running 0" not in p for p in progress), out  # it saw Tasks running
    outcome = lines[len(progress):]
    assert outcome[0].startswith(f"BatchRun {namespace}/twenty Completed: AllTasksCompleted"), out
    assert outcome[1] == "  Tasks: 20 (20 completed, 0 failed, 0 stopped)", out
    terminal = b"".join(screen).decode()
    assert terminal.count("\r") - terminal.count("\r\n") >= 2, terminal  # redrawn in place
    assert f"BatchRun {namespace}/twenty Completed" in terminal

    # one Task's kept log out of the BatchRun's shared compute log, selected by its header
    task = tasks_of(kubectl, namespace, "twenty")["twenty-task-7"]
    delete_pods(kubectl, wait_for, namespace, "twenty-task-7")
    kept = plugin(cluster, namespace, "logs", "twenty-task-7")
    assert kept.returncode == 0 and KWOK_LOG_LINE in kept.stdout, kept
    assert f"pod {task['status']['podName']})" in kept.stderr and "step run_batch_task[task_7]" in kept.stderr, kept.stderr
    run_id = task["status"]["agentLog"].split()[2].rstrip(",")
    assert kept.stdout == kept_block_in_files(dagster, run_id, namespace, "twenty-task-7", 1)


def test_a_missing_object_and_an_unreachable_cluster_are_one_line_errors(cluster, namespace, tmp_path):
    assert one_line_error(plugin(cluster, namespace, "describe", "nosuch")) == (
        f"error: Task 'nosuch' not found in namespace '{namespace}'")
    assert one_line_error(plugin(cluster, namespace, "stop", "nosuch")) == (
        f"error: Task or BatchRun 'nosuch' not found in namespace '{namespace}'")
    assert one_line_error(plugin(cluster, namespace, "watch", "nosuch")) == (
        f"error: BatchRun 'nosuch' not found in namespace '{namespace}'")

    port = closed_port()
    kubeconfig = tmp_path / "closed.kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "closed",
        "clusters": [{"name": "closed", "cluster": {"server": f"https://127.0.0.1:{port}", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "closed", "context": {"cluster": "closed", "user": "u"}}],
    }))
    cmd = [sys.executable, "-m", "kubectl_kubetask", "describe", "x", "--kubeconfig", str(kubeconfig)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO, env=_env())
    assert one_line_error(proc) == f"error: cannot reach the Kubernetes API server at https://127.0.0.1:{port}: connection refused"
