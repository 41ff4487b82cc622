"""Many standalone Tasks: N Tasks applied at once (one `kubectl apply` of N objects): time until every
Task is terminal, Task runs finished per second, and peak memory. Baseline in the same run: the same
Task CRs, ConfigMaps, Jobs and status patches made directly by N client threads (no Dagster, no bridge).

    python benchmarks/standalone.py [--tasks 100] [--storage sqlite|postgres]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import kubernetes
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fanout import WORKSPACE, JobCounter, ProcessSampler, api_requests, inline, run_baseline  # noqa: E402
from local_stack import STORAGES, Stack, local_stack  # noqa: E402

TERMINAL = ("Completed", "Failed", "Stopped")


def run_system(stack: Stack, api, ns: str, n: int) -> dict:
    stack.run("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(WORKSPACE))
    tasks = [
        {
            "apiVersion": "kubetask.io/v1alpha1",
            "kind": "Task",
            "metadata": {"name": f"solo-{i}"},
            "spec": {"contexts": [inline("Benchmark task."), inline(f"target {i}")]},
        }
        for i in range(n)
    ]
    jobs = JobCounter(api, ns)
    custom = kubernetes.client.CustomObjectsApi(api)
    before = api_requests(stack, by_resource=True)
    started = time.monotonic()
    stack.run("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(tasks))
    phases: dict[str, str] = {}
    while time.monotonic() - started < 3600:
        items = custom.list_namespaced_custom_object("kubetask.io", "v1alpha1", ns, "tasks")["items"]
        phases = {t["metadata"]["name"]: (t.get("status") or {}).get("phase") for t in items}
        if len(phases) == n and all(p in TERMINAL for p in phases.values()):
            break
        time.sleep(0.5)
    done = time.monotonic() - started
    after = api_requests(stack, by_resource=True)
    jobs.stop.set()
    return {
        "all_terminal_s": done,
        "completed": sum(p == "Completed" for p in phases.values()),
        "all_jobs_created_s": max(jobs.jobs.values()) - started if len(jobs.jobs) >= n else None,
        "runs_per_s": n / done,
        "max_running_pods": jobs.max_running,
        "requests_per_task": {k: round((after[k] - before[k]) / n, 2) for k in sorted(after) if after[k] - before[k]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--storage", choices=STORAGES, default="sqlite", help="Dagster's storage")
    args = parser.parse_args()
    with local_stack(storage=args.storage) as stack:
        api = stack.api()
        stack.run("create", "namespace", "solo-system")
        sampler = ProcessSampler(stack.pids)
        system = run_system(stack, api, "solo-system", args.tasks)
        sampler.finish()
        system["peak_rss_mb"], system["peak_pss_mb"] = sampler.report_mb()
        system["cpu_s"] = sampler.cpu_seconds()
        stack.run("create", "namespace", "solo-baseline")
        baseline = run_baseline(stack, api, "solo-baseline", args.tasks, args.tasks)
        baseline["all_terminal_s"] = baseline["completed_s"]
        baseline["runs_per_s"] = args.tasks / baseline["completed_s"]
        print(f"{args.tasks} standalone Tasks applied at once, kwok pods of 1 s, Dagster storage {args.storage}")
        print(f"{'measure':<26} {'system':>10} {'baseline':>10} {'ratio':>7}")
        for key in ("all_jobs_created_s", "all_terminal_s"):
            s, b = system[key], baseline[key]
            print(f"{key:<26} {s or float('nan'):>10.1f} {b:>10.1f} {(s / b if s else float('nan')):>6.2f}x")
        print(f"{'Task runs per second':<26} {system['runs_per_s']:>10.2f} {baseline['runs_per_s']:>10.2f}")
        print(f"{'Tasks Completed':<26} {system['completed']:>10} {args.tasks:>10}")
        requests = sum(system["requests_per_task"].values()), sum(baseline["requests_per_task"].values())
        print(f"{'API requests per Task':<26} {requests[0]:>10.1f} {requests[1]:>10.1f}")
        print("API requests per Task by verb and resource (system):", system["requests_per_task"])
        print("peak RSS (MB, process trees):", system["peak_rss_mb"])
        print("peak PSS (MB, shared pages split):", system["peak_pss_mb"])
        print("CPU seconds by component while the system ran:", system["cpu_s"])
        print(json.dumps({"storage": args.storage, "system": system, "baseline": baseline}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
