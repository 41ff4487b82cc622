"""What the bridge process costs before it does any work: import time and resident memory of
``crd_bridge.__main__``, next to a floor measured in the same run (the libraries the bridge cannot do
without: kopf, the kubernetes client, requests, prometheus_client).

    python benchmarks/bridge_footprint.py [--repeat 7] [--tree DIR]

``--tree`` measures another checkout too (e.g. a ``git worktree`` of an older commit), each import in
a fresh interpreter with that checkout first on ``sys.path``. Medians of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOOR = "import kopf, kubernetes, requests, prometheus_client"
BRIDGE = "import crd_bridge.__main__"
PROBE = """
import resource, sys, time
sys.path.insert(0, {tree!r})
t = time.perf_counter()
{statement}
seconds = time.perf_counter() - t
print(__import__("json").dumps({{"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "modules": len(sys.modules), "dagster": "dagster" in sys.modules}}))
"""


def measure(tree: Path, statement: str, repeat: int) -> dict[str, float | bool]:
    samples = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(tree=str(tree), statement=statement)],
            cwd=tree,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        samples.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "seconds": statistics.median(s["seconds"] for s in samples),
        "rss_mb": statistics.median(s["rss_mb"] for s in samples),
        "modules": statistics.median(s["modules"] for s in samples),
        "dagster": any(s["dagster"] for s in samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--tree", type=Path, action="append", default=[], help="another checkout to measure")
    args = parser.parse_args()
    rows = [("floor (kopf, kubernetes, requests, prometheus)", measure(ROOT, FLOOR, args.repeat))]
    rows.append((f"bridge ({ROOT.name})", measure(ROOT, BRIDGE, args.repeat)))
    for tree in args.tree:
        rows.append((f"bridge ({tree})", measure(tree.resolve(), BRIDGE, args.repeat)))
    print(f"{'':<48} {'import s':>9} {'RSS MB':>8} {'modules':>8}  dagster loaded")
    for name, r in rows:
        print(f"{name:<48} {r['seconds']:>9.2f} {r['rss_mb']:>8.0f} {r['modules']:>8.0f}  {r['dagster']}")


if __name__ == "__main__":
    main()
