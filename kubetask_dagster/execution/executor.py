"""A Dagster executor that runs each step in a thread of the run worker.

A BatchRun's steps spend their lives waiting on Kubernetes. The multiprocess executor starts a Python
process per step (~160 MB and seconds of start-up each on two cores), so 50 concurrent Tasks cost
8 GB and most of the run's wall time. Here every step is a thread of one process sharing one set of
resources and one compute-log capture; Dagster's own ``ActiveExecution`` still decides what runs
when (dependencies, dynamic mapping, ``max_concurrent``, retries with their delays, pools), so the
UI shows the same step per Task, retried steps and re-executions as before.

Termination: the run worker's SIGTERM is captured by Dagster on the main thread; this executor then
sets every running step's interrupt flag (``step_interrupted()``), which the steps' waits check,
starts nothing new, and records the steps it never started as failed by the termination (so that
"re-execute from failure" reruns them). Hooks are not supported (the project defines none).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Iterator
from typing import Any

from dagster import Field, executor
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.api import ExecuteRunWithPlanIterable
from dagster._core.execution.compute_logs import create_compute_log_file_key
from dagster._core.execution.context.system import PlanExecutionContext, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import PlanExecutionContextManager
from dagster._core.execution.plan.execute_plan import dagster_event_sequence_for_step
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.execution.plan.objects import StepFailureData
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.retries import RetryMode, get_retries_config
from dagster._core.executor.base import Executor
from dagster._utils.error import serializable_error_info_from_exc_info

DEFAULT_MAX_CONCURRENT = 10
_IDLE_TICK_SECONDS = 0.2

_step_state = threading.local()


def step_interrupted() -> bool:
    """True when the run is being terminated and the calling step should stop (cleaning up first).

    Steps running on the main thread (the in-process executor) are interrupted by Dagster raising
    ``DagsterExecutionInterruptedError`` instead, so this stays False there."""
    flag = getattr(_step_state, "interrupt", None)
    return flag is not None and flag.is_set()


class _StepThread:
    """One step's event sequence, produced on its own thread and handed to the main loop by a queue."""

    _DONE = object()

    def __init__(self, step_context, events: queue.Queue, interrupt: threading.Event):
        self.key = step_context.step.key
        self._context = step_context
        self._events = events
        self._interrupt = interrupt
        self.thread = threading.Thread(target=self._run, name=f"step {self.key}", daemon=True)

    def _run(self) -> None:
        _step_state.interrupt = self._interrupt
        try:
            for event in dagster_event_sequence_for_step(self._context):
                self._events.put((self.key, event))
        except BaseException:  # noqa: BLE001 - reported to the main loop, which records it on the run
            self._events.put((self.key, serializable_error_info_from_exc_info(sys.exc_info())))
        finally:
            self._events.put((self.key, self._DONE))


def _threaded_iterator(
    job_context: PlanExecutionContext, execution_plan: ExecutionPlan, max_concurrent: int
) -> Iterator[DagsterEvent]:
    compute_log_manager = job_context.instance.compute_log_manager
    step_keys = [step.key for step in execution_plan.get_steps_to_execute_in_topo_order()]
    events: queue.Queue = queue.Queue()
    interrupt = threading.Event()
    running: dict[str, _StepThread] = {}
    with (
        InstanceConcurrencyContext(job_context.instance, job_context.dagster_run) as concurrency,
        execution_plan.start(
            retry_mode=job_context.retry_mode,
            instance_concurrency_context=concurrency,
            step_dependency_config=job_context.step_dependency_config,
        ) as active_execution,
    ):
        log_key = compute_log_manager.build_log_key_for_run(job_context.run_id, create_compute_log_file_key())
        with compute_log_manager.capture_logs(log_key) as log_context:
            yield DagsterEvent.capture_logs(job_context, step_keys, log_key, log_context)
            while running or (not interrupt.is_set() and not active_execution.is_complete):
                if not interrupt.is_set() and active_execution.check_for_interrupts():
                    interrupt.set()
                    active_execution.mark_interrupted()
                    yield DagsterEvent.engine_event(
                        job_context,
                        "termination requested: interrupting the running steps",
                        EngineEventData.interrupted(list(running)),
                    )
                if not interrupt.is_set():
                    for step in active_execution.get_steps_to_execute(limit=max_concurrent - len(running)):
                        step_thread = _StepThread(
                            job_context.for_step(step, active_execution.get_known_state()), events, interrupt
                        )
                        running[step.key] = step_thread
                        step_thread.thread.start()
                    yield from active_execution.concurrency_event_iterator(job_context)
                try:
                    key, item = events.get(timeout=_IDLE_TICK_SECONDS)
                except queue.Empty:
                    continue
                while True:  # drain what is ready before scheduling again
                    if item is _StepThread._DONE:
                        running.pop(key).thread.join()
                        active_execution.verify_complete(job_context, key)
                        yield from active_execution.plan_events_iterator(job_context)
                    elif isinstance(item, DagsterEvent):
                        yield item
                        active_execution.handle_event(item)
                    else:
                        job_context.log.error(
                            f"step {key} raised outside Dagster's step error handling: {item.to_string()}"
                        )
                    try:
                        key, item = events.get_nowait()
                    except queue.Empty:
                        break
            if interrupt.is_set():
                yield from _fail_unstarted(job_context, active_execution)
                raise DagsterExecutionInterruptedError()


def _fail_unstarted(job_context: PlanExecutionContext, active_execution) -> Iterator[DagsterEvent]:
    """Record each step that was ready but never started when the run was terminated as failed by it.

    Dagster's "re-execute from failure" retries failed and interrupted steps, but it misses the
    mapped steps of a dynamic fan-out that never started (its reading of the parent run treats the
    mapped step as seen once any instance of it ran). Failing them here, with the termination as
    the error, shows in the UI which Tasks never ran, and the UI's re-execution reruns exactly them."""
    try:
        raise DagsterExecutionInterruptedError("the run was terminated before this step started")
    except DagsterExecutionInterruptedError:
        error = serializable_error_info_from_exc_info(sys.exc_info())
    while steps := active_execution.get_steps_to_execute():
        for step in steps:
            step_context = job_context.for_step(step, active_execution.get_known_state())
            event = DagsterEvent.step_failure_event(
                step_context,
                StepFailureData(error=error, user_failure_data=None),
                message=f'Step "{step.key}" did not start: the run was terminated.',
            )
            yield event
            active_execution.handle_event(event)


class ThreadedExecutor(Executor):
    """Runs every step of a run as a thread of the run worker, at most ``max_concurrent`` at once."""

    def __init__(self, retries: RetryMode, max_concurrent: int = DEFAULT_MAX_CONCURRENT):
        self._retries = retries
        self._max_concurrent = max(1, max_concurrent)

    @property
    def retries(self) -> RetryMode:
        return self._retries

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan) -> Iterator[DagsterEvent]:
        yield DagsterEvent.engine_event(
            plan_context,
            f"Executing steps in threads of one process (pid: {os.getpid()}), at most {self._max_concurrent} at once",
            event_specific_data=EngineEventData.in_process(os.getpid(), execution_plan.step_keys_to_execute),
        )
        yield from ExecuteRunWithPlanIterable(
            execution_plan=plan_context.execution_plan,
            iterator=lambda job_context, execution_plan: _threaded_iterator(
                job_context, execution_plan, self._max_concurrent
            ),
            execution_context_manager=PlanExecutionContextManager(
                job=plan_context.job,
                retry_mode=plan_context.retry_mode,
                execution_plan=plan_context.execution_plan,
                run_config=plan_context.run_config,
                dagster_run=plan_context.dagster_run,
                instance=plan_context.instance,
                raise_on_error=plan_context.raise_on_error,
                output_capture=plan_context.output_capture,
            ),
        )


@executor(
    name="kubetask_threads",
    config_schema={
        "max_concurrent": Field(int, default_value=DEFAULT_MAX_CONCURRENT, description="Steps running at once."),
        "retries": get_retries_config(),
    },
)
def threaded_executor(init_context) -> ThreadedExecutor:
    """Run each step in a thread of the run worker (for steps that mostly wait on Kubernetes)."""
    config: dict[str, Any] = init_context.executor_config
    return ThreadedExecutor(RetryMode.from_config(config["retries"]) or RetryMode.ENABLED, config["max_concurrent"])
