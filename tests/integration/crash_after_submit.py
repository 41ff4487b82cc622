"""``python -m tests.integration.crash_after_submit [flags of python -m crd_bridge]``: the bridge, killed
(exit 137, no clean-up) right after Dagster accepted its first Task submission and before the bridge
wrote the run id to the Task's status: the worst moment for a crash, which the next bridge must repair
without submitting the Task twice.

A test seam, not a bridge feature: it wraps ``DagsterClient.submit_run`` from the outside and then
runs the bridge's own ``main``; the bridge's code knows nothing of it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from crd_bridge.__main__ import main
from crd_bridge.dagster.client import DagsterClient
from kubetask import vocabulary

_submit_run = DagsterClient.submit_run


def submit_run_then_die(self: DagsterClient, job: str, run_config: Mapping[str, Any], tags: Mapping[str, str]) -> str:
    run_id = _submit_run(self, job, run_config, tags)
    if tags.get(vocabulary.TAG_KIND) == vocabulary.KIND_TASK:
        print(f"crash_after_submit: run {run_id} submitted; exiting before the status write", file=sys.stderr, flush=True)
        os._exit(137)
    return run_id


DagsterClient.submit_run = submit_run_then_die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
