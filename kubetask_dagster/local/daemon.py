"""The local stack's Dagster daemon: ``dagster-daemon`` whose run worker zygote is up before it starts.

``ForkingRunLauncher`` otherwise starts its zygote at the first launch, and the zygote's warm-up (its
imports, one instance opened) took ~4 s on two cores: the first Tasks applied after the stack came up
waited that long, and the webserver enqueued rather than launched them while no zygote answered
(``PromptRunCoordinator``). Here the zygote is started first, by a launcher of its own that lives as
long as this process; the daemon's launcher then forks through the zygote's socket, as the webserver's
does. The zygote stays this process's child, in its process group, so stopping the daemon ends it.

    python -m kubetask_dagster.local.daemon run -w workspace.yaml   # the arguments of dagster-daemon
"""

from __future__ import annotations

import sys
from typing import Any

READY = "kubetask: run worker zygote ready"
NO_ZYGOTE = "kubetask: no run worker zygote (the instance's run launcher is not ForkingRunLauncher)"
FAILED = "kubetask: run worker zygote failed to start; the first launch tries again"

_early_instance: Any = None  # keeps the early launcher, and so the zygote's stdin, open for the process's life


def start_zygote(instance: Any) -> str:
    """Start the zygote of ``instance``'s run launcher if it is a ``ForkingRunLauncher``; what happened."""
    from kubetask_dagster.local.launcher import ForkingRunLauncher

    launcher = instance.run_launcher
    if not isinstance(launcher, ForkingRunLauncher):
        return NO_ZYGOTE
    return READY if launcher.start_zygote() else FAILED


def main(argv: list[str] | None = None) -> None:
    global _early_instance
    from dagster import DagsterInstance

    _early_instance = DagsterInstance.get()
    print(start_zygote(_early_instance), file=sys.stderr, flush=True)
    from dagster._daemon.cli import main as daemon_main

    sys.argv = ["dagster-daemon", *(sys.argv[1:] if argv is None else argv)]
    daemon_main()


if __name__ == "__main__":
    main()
