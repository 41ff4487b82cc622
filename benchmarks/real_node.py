"""Job created -> agent container running, on the real node, for N Tasks applied one after another
(through the bridge and Dagster, as users run them); next to the same Tasks on kwok's node, the
floor of the control plane's share (scheduling, the Job controller, status updates) in this run.

    python benchmarks/real_node.py [--tasks 20]

It starts a control plane (with its real node), Dagster and the bridge of its own, and stops them.
Times are taken on this process's clock when a watch event arrives; the echo agent sleeps 2 s so
that its running state is seen.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import kubernetes
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from local_stack import local_stack  # noqa: E402

from tests.integration.kt_helpers import real_workspace  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


class Stamps:
    """First time a Job is seen, and first time its pod's agent container runs (or has run)."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str):
        self.created: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self._stop = threading.Event()
        batch, core = kubernetes.client.BatchV1Api(api), kubernetes.client.CoreV1Api(api)
        threading.Thread(
            target=self._watch, args=(batch.list_namespaced_job, namespace, self._job), daemon=True
        ).start()
        threading.Thread(target=self._watch, args=(core.list_namespaced_pod, namespace, self._pod), daemon=True).start()

    def _watch(self, fn, namespace, handle):
        while not self._stop.is_set():
            try:
                for event in kubernetes.watch.Watch().stream(fn, namespace, timeout_seconds=30):
                    handle(event["object"])
            except Exception:  # the stack stopping under a watch at exit
                time.sleep(0.5)

    def _job(self, job):
        self.created.setdefault(job.metadata.name, time.monotonic())

    def _pod(self, pod):
        job = (pod.metadata.labels or {}).get("job-name")
        for status in pod.status.container_statuses or []:
            if status.name == "agent" and status.state and (status.state.running or status.state.terminated):
                self.running.setdefault(job, time.monotonic())


def measure(stack, namespace: str, workspace: dict, tasks: int) -> list[float]:
    stack.run("create", "namespace", namespace)
    api = stack.api()
    stamps = Stamps(api, namespace)
    ws = {
        "apiVersion": "kubetask.io/v1alpha1",
        "kind": "WorkspaceConfig",
        "metadata": {"name": "default"},
        "spec": workspace,
    }
    stack.run("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(ws))
    latencies = []
    for i in range(tasks):
        name = f"t{i}"
        task = {
            "apiVersion": "kubetask.io/v1alpha1",
            "kind": "Task",
            "metadata": {"name": name},
            "spec": {
                "contexts": [{"type": "File", "file": {"filePath": "/workspace/.sleep", "source": {"inline": "2"}}}]
            },
        }
        stack.run("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(task))
        job = f"{name}-job-1"
        deadline = time.monotonic() + 120
        while job not in stamps.running and time.monotonic() < deadline:
            time.sleep(0.02)
        if job not in stamps.running:
            raise SystemExit(f"{namespace}/{job}: the agent never ran")
        latencies.append(stamps.running[job] - stamps.created[job])
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20)
    args = parser.parse_args()
    with local_stack() as stack:
        if stack.run("get", "nodes", "-o", "name").count("node/localhost") != 1:
            raise SystemExit("no real node in this stack (see deploy/local/cluster's log)")
        real = measure(stack, "bench-real", real_workspace()["spec"], args.tasks)
        kwok = measure(stack, "bench-kwok", {"agentImage": "example.invalid/agent:1"}, args.tasks)
    print(f"Job created -> agent container running, {args.tasks} Tasks one after another")
    print(f"{'node':<22}{'p50 s':>8}{'p95 s':>8}{'max s':>8}")
    for label, values in (("real (containerd)", real), ("kwok (floor)", kwok)):
        print(f"{label:<22}{statistics.median(values):>8.2f}{pct(values, 95):>8.2f}{max(values):>8.2f}")


if __name__ == "__main__":
    main()
