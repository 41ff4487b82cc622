"""Task latency: `kubectl apply` of a Task to its Job created, to Task Running, and pod end to Task
terminal, for N Tasks applied one after another; median and 95th percentile, side by side with a
baseline that does the same Kubernetes work (ConfigMap, Job, status patches) directly with the
kubernetes client, without Dagster and the bridge.

    python benchmarks/task_latency.py [--tasks 30] [--storage sqlite|postgres]

It starts a control plane, Dagster and bridge of its own (and stops them).
Every time is taken on this process's clock when a watch event arrives.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import kubernetes
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fanout import ProcessSampler  # noqa: E402
from local_stack import STORAGES, local_stack  # noqa: E402

from kubetask.api import Task, WorkspaceConfig  # noqa: E402
from kubetask.domain import manifests, status  # noqa: E402
from kubetask.domain.contexts import aggregate, all_contexts, resolve  # noqa: E402
from tests.fakes import StaticReader  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


class Recorder:
    """Watches Jobs, Pods and Tasks in a namespace and stamps the first time each state is seen."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str):
        self.ns = namespace
        self.core = kubernetes.client.CoreV1Api(api)
        self.batch = kubernetes.client.BatchV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.seen: dict[tuple[str, str], float] = {}
        self.stop = threading.Event()
        for target in (self._jobs, self._pods, self._tasks):
            threading.Thread(target=target, daemon=True).start()

    def _stamp(self, key: tuple[str, str]) -> None:
        self.seen.setdefault(key, time.monotonic())

    def _loop(self, fn, handle):
        while not self.stop.is_set():
            w = kubernetes.watch.Watch()
            try:
                for event in w.stream(fn, self.ns, timeout_seconds=5):
                    handle(event["object"])
            except Exception:  # noqa: BLE001 - a benchmark watch just reconnects
                time.sleep(0.1)

    def _jobs(self):
        def handle(job):
            task = (job.metadata.labels or {}).get("kubetask.io/task")
            if task:
                self._stamp(("job", task))

        self._loop(self.batch.list_namespaced_job, handle)

    def _pods(self):
        def handle(pod):
            task = (pod.metadata.labels or {}).get("kubetask.io/task")
            if task and pod.status.phase in ("Succeeded", "Failed"):
                self._stamp(("pod-end", task))

        self._loop(self.core.list_namespaced_pod, handle)

    def _tasks(self):
        def list_tasks(namespace, **kw):
            return self.custom.list_namespaced_custom_object("kubetask.io", "v1alpha1", namespace, "tasks", **kw)

        def handle(task):
            phase = (task.get("status") or {}).get("phase")
            name = task["metadata"]["name"]
            if phase == "Running":
                self._stamp(("running", name))
            if phase in ("Completed", "Failed", "Stopped"):
                self._stamp(("terminal", name))

        self._loop(list_tasks, handle)


def task_body(name: str, executed_by: str | None = None) -> dict:
    # A Task marked as executed by someone else is left alone by the bridge: the baseline's.
    metadata = {"name": name, **({"annotations": {"kubetask.io/executed-by": executed_by}} if executed_by else {})}
    return {
        "apiVersion": "kubetask.io/v1alpha1",
        "kind": "Task",
        "metadata": metadata,
        "spec": {
            "contexts": [
                {"type": "File", "file": {"filePath": "/workspace/task.md", "source": {"inline": f"do {name}"}}}
            ]
        },
    }


WORKSPACE = {
    "apiVersion": "kubetask.io/v1alpha1",
    "kind": "WorkspaceConfig",
    "metadata": {"name": "default"},
    "spec": {"agentImage": "example.invalid/agent:1", "serviceAccountName": "default"},
}


class Baseline:
    """The floor: what the system does per Task, done directly, reacting to a Task watch."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str):
        self.api, self.ns = api, namespace
        self.core = kubernetes.client.CoreV1Api(api)
        self.batch = kubernetes.client.BatchV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.workspace = WorkspaceConfig.model_validate(WORKSPACE)
        self.stop = threading.Event()
        threading.Thread(target=self._tasks, daemon=True).start()
        threading.Thread(target=self._pods, daemon=True).start()

    def _patch(self, name: str, patch: dict) -> None:
        self.custom.patch_namespaced_custom_object_status(
            "kubetask.io", "v1alpha1", self.ns, "tasks", name, {"status": patch}
        )

    def _tasks(self):
        def list_tasks(namespace, **kw):
            return self.custom.list_namespaced_custom_object("kubetask.io", "v1alpha1", namespace, "tasks", **kw)

        while not self.stop.is_set():
            w = kubernetes.watch.Watch()
            for event in w.stream(list_tasks, self.ns, timeout_seconds=5):
                obj = event["object"]
                if event["type"] != "ADDED" or obj.get("status"):
                    continue
                task = Task.model_validate(obj)
                files = aggregate(resolve(all_contexts(task, self.workspace.spec), self.ns, StaticReader()).parts)
                cm, _ = manifests.build_context_objects(task, files)
                self.core.create_namespaced_config_map(self.ns, cm)
                job = manifests.build_job(
                    task, self.workspace.spec, files, [], attempt=1, dagster_run_id="baseline", timeout_seconds=None
                )
                self.batch.create_namespaced_job(self.ns, job)
                self._patch(task.metadata.name, status.running({}, job_name=job["metadata"]["name"], attempt=1))

    def _pods(self):
        while not self.stop.is_set():
            w = kubernetes.watch.Watch()
            for event in w.stream(self.core.list_namespaced_pod, self.ns, timeout_seconds=5):
                pod = event["object"]
                task = (pod.metadata.labels or {}).get("kubetask.io/task")
                if task and pod.status.phase == "Succeeded" and event["type"] == "MODIFIED":
                    self._patch(task, status.completed({"phase": "Running"}, exit_code=0))


def measure(
    api, kubectl: list[str], namespace: str, count: int, label: str, executed_by: str | None = None
) -> dict[str, list[float]]:
    recorder = Recorder(api, namespace)
    time.sleep(1)
    out: dict[str, list[float]] = {"apply_to_job": [], "apply_to_running": [], "pod_end_to_terminal": []}
    for i in range(count):
        name = f"{label}-{i}"
        applied = time.monotonic()
        subprocess.run(
            [*kubectl, "apply", "-n", namespace, "-f", "-"],
            input=yaml.safe_dump(task_body(name, executed_by)),
            text=True,
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 120
        needed = [(what, name) for what in ("job", "running", "pod-end", "terminal")]
        while not all(k in recorder.seen for k in needed) and time.monotonic() < deadline:
            time.sleep(0.02)
        s = recorder.seen
        missing = [k for k in needed if k not in s]
        if missing:
            raise RuntimeError(f"{name}: never saw {missing}")
        out["apply_to_job"].append(s[("job", name)] - applied)
        out["apply_to_running"].append(s[("running", name)] - applied)
        out["pod_end_to_terminal"].append(s[("terminal", name)] - s[("pod-end", name)])
    recorder.stop.set()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--storage", choices=STORAGES, default="sqlite", help="Dagster's storage")
    args = parser.parse_args()

    with local_stack(storage=args.storage) as stack:
        api, kubectl = stack.api(), stack.kubectl
        results = {}
        cpu: dict[str, dict[str, float]] = {}
        for label in ("system", "baseline"):
            ns = f"bench-{label}-{int(time.time())}"
            subprocess.run([*kubectl, "create", "namespace", ns], check=True, capture_output=True)
            if label == "system":
                subprocess.run(
                    [*kubectl, "apply", "-n", ns, "-f", "-"],
                    input=yaml.safe_dump(WORKSPACE),
                    text=True,
                    check=True,
                    capture_output=True,
                )
                subprocess.run(
                    [*kubectl, "apply", "-n", ns, "-f", "-"],
                    input=yaml.safe_dump(task_body("warmup")),
                    text=True,
                    check=True,
                    capture_output=True,
                )
                time.sleep(8)  # the first run imports everything once
                sampler = ProcessSampler(stack.pids)
                results[label] = measure(api, kubectl, ns, args.tasks, "t")
            else:
                baseline = Baseline(api, ns)
                time.sleep(1)
                sampler = ProcessSampler(stack.pids)
                results[label] = measure(api, kubectl, ns, args.tasks, "b", executed_by="baseline")
                baseline.stop.set()
            sampler.finish()
            cpu[label] = sampler.cpu_seconds()
        print(
            f"Task latency over {args.tasks} Tasks applied one after another (seconds), Dagster storage {args.storage}"
        )
        print(
            f"{'measure':<22} {'system p50':>11} {'system p95':>11} {'baseline p50':>13} {'baseline p95':>13} {'ratio p50':>10}"
        )
        for key in ("apply_to_job", "apply_to_running", "pod_end_to_terminal"):
            s, b = results["system"][key], results["baseline"][key]
            p50s, p95s, p50b, p95b = statistics.median(s), pct(s, 95), statistics.median(b), pct(b, 95)
            print(
                f"{key:<22} {p50s:>11.2f} {p95s:>11.2f} {p50b:>13.2f} {p95b:>13.2f} {p50s / p50b if p50b else float('inf'):>9.1f}x"
            )
        print("CPU seconds per Task by component (system, baseline; the baseline's client is this process):")
        for name in cpu["system"]:
            per_task = [cpu[label].get(name, 0.0) / args.tasks for label in ("system", "baseline")]
            print(f"  {name:<26} {per_task[0]:>8.3f} {per_task[1]:>8.3f}")
        print(json.dumps({**results, "cpu_s": cpu}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
