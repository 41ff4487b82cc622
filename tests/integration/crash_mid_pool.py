"""``python -m tests.integration.crash_mid_pool [flags of python -m crd_bridge]``: the bridge, killed
(exit 137, no clean-up) in the middle of its first pool. ``KUBETASK_CRASH_POOL=before-launch``: after it
claimed the pool's Tasks, before Dagster saw the run; ``after-launch``: after Dagster accepted the run,
before any Task's status records it. The next bridge must repair either without losing a Task or
running one twice.

A test seam, not a bridge feature: it wraps ``TaskPools.launch`` from the outside and then runs the
bridge's own ``main``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from crd_bridge.__main__ import main
from crd_bridge.pools import TaskPools
from kubetask.objects import Obj

_launch = TaskPools.launch
MOMENT = os.environ.get("KUBETASK_CRASH_POOL", "after-launch")


def launch_then_die(self: TaskPools, namespace: str, pool: str, tasks: Sequence[Obj]) -> str:
    if MOMENT == "before-launch":
        print(f"crash_mid_pool: pool {pool} claimed; exiting before its launch", file=sys.stderr, flush=True)
        os._exit(137)
    run_id = _launch(self, namespace, pool, tasks)
    print(f"crash_mid_pool: run {run_id} of pool {pool} launched; exiting", file=sys.stderr, flush=True)
    os._exit(137)


TaskPools.launch = launch_then_die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
