"""Memory of the bridge's Task cache with large contexts: N Tasks whose contexts hold C bytes, each
parsed from JSON as a watch event delivers it, stored in the ``ObjectStore`` the runtime builds.

    python benchmarks/bridge_cache.py [--tasks 5000] [--context-bytes 500000] [--applied]

Three fresh interpreters, one per mode, each reporting the growth of its resident memory:
- floor: the same N Tasks without contexts (what caching N objects costs at all);
- whole: the contexts cached too, as the bridge did before it kept only the decided fields;
- decided: the bridge now (``crd_bridge.cache.decided_fields``).
``--applied`` adds kubectl apply's last-applied-configuration annotation (a second copy of the spec).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, resource, sys
sys.path.insert(0, {root!r})
from crd_bridge import batchruns, tasks
from crd_bridge.cache import ObjectStore, decided_fields

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

n, size, mode, applied = {tasks!r}, {size!r}, {mode!r}, {applied!r}
template = {{"apiVersion": "kubetask.io/v1alpha1", "kind": "Task",
            "metadata": {{"name": "NAME", "namespace": "bench", "uid": "UID", "resourceVersion": "1", "generation": 1,
                          "creationTimestamp": "2026-12-02T00:00:00Z", "labels": {{"app": "kubetask"}}, "annotations": {{}}}},
            "spec": {{"workspaceConfigRef": "default",
                      "contexts": [{{"type": "File", "file": {{"filePath": "/workspace/task.md",
                                    "source": {{"inline": "x" * (size if mode != "floor" else 0)}}}}}}]}},
            "status": {{"phase": "Running", "dagsterRunId": "0123456789abcdef", "conditions": []}}}}
if applied and mode != "floor":
    template["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = json.dumps(
        {{"spec": template["spec"]}})
text = json.dumps(template)
store = ObjectStore({{tasks.BY_WORKSPACE: tasks.workspace_index, batchruns.BY_BATCHRUN: batchruns.batchrun_index}},
                    trim=decided_fields if mode == "decided" else None)
before = rss_mb()
for i in range(n):  # a fresh object per Task, as each watch event is
    store.put(json.loads(text.replace("NAME", f"task-{{i}}").replace("UID", f"uid-{{i}}")))
after = rss_mb()
print(json.dumps({{"cached": len(store), "growth_mb": after - before,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def measure(mode: str, tasks: int, size: int, applied: bool) -> dict[str, float]:
    code = PROBE.format(root=str(ROOT), tasks=tasks, size=size, mode=mode, applied=applied)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--context-bytes", type=int, default=500_000)
    parser.add_argument("--applied", action="store_true", help="with kubectl apply's last-applied annotation")
    args = parser.parse_args()
    data_mb = args.tasks * args.context_bytes * (2 if args.applied else 1) / 1e6
    print(
        f"{args.tasks} Tasks, {args.context_bytes} bytes of contexts each ({data_mb:.0f} MB of contexts"
        f"{', twice: kubectl apply' if args.applied else ''})"
    )
    print(f"{'mode':<9} {'cache growth':>13} {'peak RSS':>10}")
    for mode in ("floor", "whole", "decided"):
        result = measure(mode, args.tasks, args.context_bytes, args.applied)
        assert result["cached"] == args.tasks
        print(f"{mode:<9} {result['growth_mb']:>10.1f} MB {result['peak_mb']:>7.0f} MB")


if __name__ == "__main__":
    main()
