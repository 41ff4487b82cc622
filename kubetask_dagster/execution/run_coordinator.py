"""A run coordinator that launches a run at once while the run queue's limits allow it.

Dagster's ``QueuedRunCoordinator`` only enqueues; the daemon dequeues on a tick of at least a second,
which it waits for in half-second steps. That tick was most of a lone Task's apply-to-Job latency
(p50 1.04 s of which ~0.45 s waiting in the queue; BENCHMARKS.md "Task latency").

``PromptRunCoordinator`` takes the same configuration and keeps its limits. A submitted run is
launched by the submitting process (the webserver) only when nothing waits in the queue (first come,
first served), fewer than ``max_concurrent_runs`` runs are in progress, no tag concurrency limit
blocks it, it claims no op concurrency pool, and the run launcher is ready to launch at once
(``ForkingRunLauncher.warm()``: a zygote answers). Otherwise it is enqueued, exactly as before, and the
daemon dequeues it.

One process's submissions are serialised, so its own launches count each other. The daemon counts
in-progress runs on its own tick, so a launch here and a dequeue there in the same instant can run
one run over ``max_concurrent_runs``; the limit protects a small machine's cores, not a contract.
"""

from __future__ import annotations

import logging
import threading

from dagster._core.run_coordinator.base import SubmitRunContext
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus, RunsFilter
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import ACTIVE_RUN_STATUSES
from dagster._utils.tags import TagConcurrencyLimitsCounter

log = logging.getLogger(__name__)


class PromptRunCoordinator(QueuedRunCoordinator):
    """``QueuedRunCoordinator`` that skips the queue while the queue's limits leave room."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._launching = threading.Lock()

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        if run.status == DagsterRunStatus.NOT_STARTED:
            with self._launching:
                if self._may_launch_now(run):
                    self._instance.launch_run(run.run_id, context.workspace)
                    launched = self._instance.get_run_by_id(run.run_id)
                    if launched is not None:
                        return launched
        return super().submit_run(context)

    def _may_launch_now(self, run: DagsterRun) -> bool:
        """The queue's own rules for a run that would be the next to dequeue, and a warm launcher."""
        try:
            if not getattr(self._instance.run_launcher, "warm", lambda: True)():
                return False
            if run.run_op_concurrency is not None and run.run_op_concurrency.root_key_counts:
                return False  # op pools: the daemon's counter decides whether they have room
            instance = self._instance
            if instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.QUEUED])):
                return False
            in_progress = instance.get_runs(RunsFilter(statuses=ACTIVE_RUN_STATUSES))  # what the daemon counts
            limit = self.get_run_queue_config().max_concurrent_runs
            if limit != -1 and len(in_progress) >= limit:
                return False
            return not TagConcurrencyLimitsCounter(self._tag_concurrency_limits, in_progress).is_blocked(run)
        except Exception:  # noqa: BLE001 - the queue is always a correct answer
            log.exception("could not decide whether run %s may skip the queue; enqueuing it", run.run_id)
            return False
