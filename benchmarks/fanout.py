"""Fan-out: one BatchRun of N Tasks (kwok pods last 1 s, parallelism P): time to all Jobs created and
to the BatchRun Completed, peak memory of the bridge and Dagster's processes, and API server requests
per Task by verb. Baseline in the same run: the same Task CRs, ConfigMaps, Jobs and status patches
made directly with the kubernetes client by P worker threads, with no Dagster and no bridge.
Dagster's storage is SQLite, or with --storage postgres a PostgreSQL server the benchmark starts.

    python benchmarks/fanout.py [--tasks 200] [--parallelism 50] [--storage sqlite|postgres] [--budget]

--budget gives the BatchRun a budget it never reaches: each Task's step then sums the BatchRun's
reported usage before it starts (the price of spec.budget).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from local_stack import STORAGES, Stack, local_stack, process_children, tree_cpu_seconds, tree_memory_bytes  # noqa: E402

from kubetask.api import Task, WorkspaceConfig  # noqa: E402
from kubetask.domain import manifests, status  # noqa: E402
from kubetask.domain.contexts import aggregate, all_contexts, resolve  # noqa: E402
from tests.fakes import StaticReader  # noqa: E402

WORKSPACE = {
    "apiVersion": "kubetask.io/v1alpha1",
    "kind": "WorkspaceConfig",
    "metadata": {"name": "default"},
    "spec": {"agentImage": "example.invalid/agent:1", "serviceAccountName": "default"},
}


# The baseline client's requests per Task: create the Task, its ConfigMap and Job; patch Running, then Completed.
BASELINE_CLIENT_REQUESTS = 5


def inline(text: str) -> dict:
    return {"type": "File", "file": {"filePath": "/workspace/task.md", "source": {"inline": text}}}


def api_requests(stack: Stack, by_resource: bool = False) -> collections.Counter:
    """kube-apiserver's own request counters, by verb (or by "verb resource[/subresource]")."""
    counts: collections.Counter = collections.Counter()
    for family in text_string_to_metric_families(stack.run("get", "--raw", "/metrics")):
        for sample in family.samples:
            if sample.name != "apiserver_request_total":
                continue
            labels = sample.labels
            key = labels.get("verb", "")
            if by_resource:
                sub = labels.get("subresource")
                key = f"{key} {labels.get('resource', '')}{'/' + sub if sub else ''}"
            counts[key] += sample.value
    return counts


class JobCounter:
    """Watches Jobs and pods of a namespace: when each Job appeared, how many run at once."""

    def __init__(self, api, namespace: str):
        self.batch, self.core, self.ns = kubernetes.client.BatchV1Api(api), kubernetes.client.CoreV1Api(api), namespace
        self.jobs: dict[str, float] = {}
        self.running: set[str] = set()
        self.max_running = 0
        self.stop = threading.Event()
        threading.Thread(target=self._watch, args=(self.batch.list_namespaced_job, self._job), daemon=True).start()
        threading.Thread(target=self._watch, args=(self.core.list_namespaced_pod, self._pod), daemon=True).start()

    def _watch(self, fn, handle):
        while not self.stop.is_set():
            try:
                for event in kubernetes.watch.Watch().stream(fn, self.ns, timeout_seconds=5):
                    handle(event["object"])
            except Exception:  # noqa: BLE001 - a benchmark watch reconnects
                time.sleep(0.1)

    def _job(self, job):
        self.jobs.setdefault(job.metadata.name, time.monotonic())

    def _pod(self, pod):
        if pod.status.phase == "Running":
            self.running.add(pod.metadata.name)
        else:
            self.running.discard(pod.metadata.name)
        self.max_running = max(self.max_running, len(self.running))


class ProcessSampler:
    """Per component (process tree): peak RSS, peak PSS, and the CPU seconds spent while sampling
    (each process's CPU counted from its first to its last sample, so forked run workers that come
    and go are included)."""

    def __init__(self, pids: dict[str, int]):
        self.pids, self.peak, self.peak_pss = pids, collections.Counter(), collections.Counter()
        self._cpu_first: dict[str, dict[int, float]] = collections.defaultdict(dict)
        self._cpu_last: dict[str, dict[int, float]] = collections.defaultdict(dict)
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            children = process_children()
            for name, pid in self.pids.items():
                memory = tree_memory_bytes(pid, children)
                self.peak[name] = max(self.peak[name], memory["rss"])
                self.peak_pss[name] = max(self.peak_pss[name], memory["pss"])
                for proc, seconds in tree_cpu_seconds(pid, children).items():
                    self._cpu_first[name].setdefault(proc, seconds)
                    self._cpu_last[name][proc] = seconds
            if self.stop.wait(0.5):
                return

    def finish(self) -> None:
        self.stop.set()
        self._thread.join()

    def report_mb(self) -> tuple[dict[str, int], dict[str, int]]:
        return (
            {k: round(v / 2**20) for k, v in self.peak.items()},
            {k: round(v / 2**20) for k, v in self.peak_pss.items()},
        )

    def cpu_seconds(self) -> dict[str, float]:
        return {
            name: round(sum(last[p] - self._cpu_first[name][p] for p in last), 1)
            for name, last in self._cpu_last.items()
        }


def run_system(stack: Stack, api, ns: str, n: int, parallelism: int, budget: bool = False) -> dict:
    stack.run("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(WORKSPACE))
    batchrun = {
        "apiVersion": "kubetask.io/v1alpha1",
        "kind": "BatchRun",
        "metadata": {"name": "fan"},
        "spec": {
            **({"budget": {"maxCostUSD": 1e9}} if budget else {}),  # never spent: what checking it costs
            "parallelism": parallelism,
            "batchSpec": {
                "commonContext": [inline("Benchmark task.")],
                "variableContexts": [
                    [
                        {
                            "type": "File",
                            "file": {"filePath": "/workspace/target.md", "source": {"inline": f"target {i}"}},
                        }
                    ]
                    for i in range(n)
                ],
            },
        },
    }
    jobs = JobCounter(api, ns)
    custom = kubernetes.client.CustomObjectsApi(api)
    before = api_requests(stack)
    started = time.monotonic()
    stack.run("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(batchrun))
    phase = None
    while time.monotonic() - started < 3600:
        phase = (
            custom.get_namespaced_custom_object("kubetask.io", "v1alpha1", ns, "batchruns", "fan").get("status") or {}
        ).get("phase")
        if phase in ("Completed", "Failed", "Stopped"):
            break
        time.sleep(0.5)
    done = time.monotonic() - started
    after = api_requests(stack)
    jobs.stop.set()
    return {
        "phase": phase,
        "all_jobs_created_s": max(jobs.jobs.values()) - started if len(jobs.jobs) >= n else None,
        "completed_s": done,
        "max_running_pods": jobs.max_running,
        "requests_per_task": {v: round((after[v] - before[v]) / n, 2) for v in after if after[v] - before[v]},
    }


def run_baseline(stack: Stack, api, ns: str, n: int, parallelism: int) -> dict:
    core, batch = kubernetes.client.CoreV1Api(api), kubernetes.client.BatchV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    workspace = WorkspaceConfig.model_validate(WORKSPACE)
    jobs = JobCounter(api, ns)
    ended: dict[str, threading.Event] = {}
    pods = kubernetes.client.CoreV1Api(api)

    def watch_pods():
        while not jobs.stop.is_set():
            for event in kubernetes.watch.Watch().stream(pods.list_namespaced_pod, ns, timeout_seconds=5):
                pod = event["object"]
                task = (pod.metadata.labels or {}).get("kubetask.io/task")
                if task in ended and pod.status.phase in ("Succeeded", "Failed"):
                    ended[task].set()

    def one(i: int) -> None:
        name = f"fan-task-{i}"
        body = {
            "apiVersion": "kubetask.io/v1alpha1",
            "kind": "Task",
            "metadata": {"name": name, "annotations": {"kubetask.io/executed-by": "baseline"}},
            "spec": {"contexts": [inline("Benchmark task."), inline(f"target {i}")]},
        }
        obj = custom.create_namespaced_custom_object("kubetask.io", "v1alpha1", ns, "tasks", body)
        task = Task.model_validate(obj)
        files = aggregate(resolve(all_contexts(task, workspace.spec), ns, StaticReader()).parts)
        cm, _ = manifests.build_context_objects(task, files)
        ended[name] = threading.Event()
        core.create_namespaced_config_map(ns, cm)
        job = manifests.build_job(
            task, workspace.spec, files, [], attempt=1, dagster_run_id="baseline", timeout_seconds=None
        )
        batch.create_namespaced_job(ns, job)
        custom.patch_namespaced_custom_object_status(
            "kubetask.io",
            "v1alpha1",
            ns,
            "tasks",
            name,
            {"status": status.running({}, job_name=job["metadata"]["name"], attempt=1)},
        )
        ended[name].wait(600)
        custom.patch_namespaced_custom_object_status(
            "kubetask.io",
            "v1alpha1",
            ns,
            "tasks",
            name,
            {"status": status.completed({"phase": "Running"}, exit_code=0)},
        )

    threading.Thread(target=watch_pods, daemon=True).start()
    before = api_requests(stack)
    started = time.monotonic()
    with ThreadPoolExecutor(parallelism) as pool:
        list(pool.map(one, range(n)))
    done = time.monotonic() - started
    after = api_requests(stack)
    jobs.stop.set()
    return {
        "phase": "Completed",
        "all_jobs_created_s": max(jobs.jobs.values()) - started,
        "completed_s": done,
        "max_running_pods": jobs.max_running,
        "requests_per_task": {v: round((after[v] - before[v]) / n, 2) for v in after if after[v] - before[v]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--parallelism", type=int, default=50)
    parser.add_argument("--storage", choices=STORAGES, default="sqlite", help="Dagster's storage")
    parser.add_argument("--budget", action="store_true", help="give the BatchRun a budget it never reaches")
    args = parser.parse_args()
    with local_stack(storage=args.storage) as stack:
        api = stack.api()
        results = {"storage": args.storage}
        system = functools.partial(run_system, budget=args.budget)
        for label, fn in (("system", system), ("baseline", run_baseline)):
            ns = f"fan-{label}"
            stack.run("create", "namespace", ns)
            sampler = ProcessSampler(stack.pids)
            results[label] = fn(stack, api, ns, args.tasks, args.parallelism)
            sampler.finish()
            results[label]["cpu_s"] = sampler.cpu_seconds()
            if label == "system":
                results[label]["peak_rss_mb"], results[label]["peak_pss_mb"] = sampler.report_mb()
        s, b = results["system"], results["baseline"]
        print(
            f"Fan-out of {args.tasks} Tasks, parallelism {args.parallelism}, kwok pods of 1 s, Dagster storage {args.storage}"
            + (", with a budget" if args.budget else "")
        )
        print(f"{'measure':<26} {'system':>10} {'baseline':>10} {'ratio':>7}")
        for key in ("all_jobs_created_s", "completed_s"):
            ratio = s[key] / b[key] if s[key] and b[key] else float("nan")
            print(f"{key:<26} {s[key] or float('nan'):>10.1f} {b[key]:>10.1f} {ratio:>6.2f}x")
        print(f"{'max pods running at once':<26} {s['max_running_pods']:>10} {b['max_running_pods']:>10}")
        system_total, baseline_total = sum(s["requests_per_task"].values()), sum(b["requests_per_task"].values())
        print(f"{'API requests per Task':<26} {system_total:>10.1f} {baseline_total:>10.1f}")
        # The baseline's own client makes BASELINE_CLIENT_REQUESTS per Task; the rest of its count is
        # what Kubernetes itself spends on a Job (controller-manager, scheduler, kwok), the same here.
        kubernetes_share = baseline_total - BASELINE_CLIENT_REQUESTS
        print(
            f"{'  of them kubetask own':<26} {system_total - kubernetes_share:>10.1f} {BASELINE_CLIENT_REQUESTS:>10.1f}"
        )
        print("peak RSS (MB, process trees; run workers are forks in the daemon's tree):", s.get("peak_rss_mb"))
        print(
            "peak PSS (MB, the same trees, shared pages split among the processes sharing them):", s.get("peak_pss_mb")
        )
        print(
            f"CPU seconds by component (2 cores): system {sum(s['cpu_s'].values()):.1f}, baseline {sum(b['cpu_s'].values()):.1f}"
            " (the baseline's own client is this process, not counted)"
        )
        for name in s["cpu_s"]:
            print(f"  {name:<24} {s['cpu_s'][name]:>8.1f} {b['cpu_s'].get(name, 0.0):>8.1f}")
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
