"""The threaded executor runs mapped steps concurrently in one process, honouring Dagster's own
scheduling: max_concurrent, retries with RetryRequested, failures isolated to their step, and a
re-execution from failure."""

import os
import signal
import threading
import time

from dagster import (
    DagsterExecutionInterruptedError,
    DagsterInstance,
    DynamicOut,
    DynamicOutput,
    Failure,
    ReexecutionOptions,
    RetryRequested,
    execute_job,
    job,
    op,
    reconstructable,
)

from kubetask_dagster.execution.executor import step_interrupted, threaded_executor
from kubetask_dagster.resources import RunStorageIOManager

WIDTH = 8
_lock = threading.Lock()
_state = {"running": 0, "peak": 0, "threads": set(), "pids": set()}


@op(out=DynamicOut(dict))
def fan_out():
    for i in range(WIDTH):
        yield DynamicOutput({"index": i}, mapping_key=f"task_{i}")


@op
def work(context, item: dict) -> dict:
    with _lock:
        _state["running"] += 1
        _state["peak"] = max(_state["peak"], _state["running"])
        _state["threads"].add(threading.get_ident())
        _state["pids"].add(os.getpid())
    try:
        time.sleep(0.5)
    finally:
        with _lock:
            _state["running"] -= 1
    plan = context.instance.run_storage.get_cursor_values({"test/plan"}).get("test/plan", "")
    if plan == f"flaky-{item['index']}" and context.retry_number < 2:
        raise RetryRequested(max_retries=2, seconds_to_wait=0.1)
    if plan == f"fail-{item['index']}":
        raise Failure("planned failure")
    return {"done": item["index"], "retry": context.retry_number}


@op
def gather(results: list) -> list:
    return sorted(r["done"] for r in results)


@job(executor_def=threaded_executor, resource_defs={"io_manager": RunStorageIOManager()})
def threaded_fan_job():
    gather(fan_out().map(work).collect())


def _run(instance, max_concurrent: int, **kwargs):
    _state.update(running=0, peak=0, threads=set(), pids=set())
    config = {"execution": {"config": {"max_concurrent": max_concurrent}}}
    return execute_job(reconstructable(threaded_fan_job), instance=instance, run_config=config, raise_on_error=False, **kwargs)


def test_steps_run_concurrently_in_threads_of_one_process_up_to_max_concurrent(tmp_path):
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        with _run(instance, max_concurrent=4) as result:
            assert result.success
            assert result.output_for_node("gather") == list(range(WIDTH))
            # In the run's own event order: four steps start before the first one ends, never a fifth.
            order = [(e.event_type_value, e.step_key) for e in result.all_events
                     if (e.step_key or "").startswith("work[") and e.event_type_value in ("STEP_START", "STEP_SUCCESS")]
            first_end = next(i for i, (kind, _) in enumerate(order) if kind == "STEP_SUCCESS")
            assert [kind for kind, _ in order[:first_end]] == ["STEP_START"] * 4
        assert _state["peak"] == 4
        assert _state["pids"] == {os.getpid()}
        assert len(_state["threads"]) >= 4


def test_a_retried_step_is_rerun_and_a_failed_step_fails_alone(tmp_path):
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        instance.run_storage.set_cursor_values({"test/plan": "flaky-3"})
        with _run(instance, max_concurrent=8) as result:
            assert result.success
            retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
            assert [e.step_key for e in retries] == ["work[task_3]", "work[task_3]"]
        instance.run_storage.set_cursor_values({"test/plan": "fail-5"})
        with _run(instance, max_concurrent=8) as failed:
            assert not failed.success
            succeeded = {e.step_key for e in failed.all_events if e.event_type_value == "STEP_SUCCESS"}
            assert succeeded == {"fan_out"} | {f"work[task_{i}]" for i in range(WIDTH) if i != 5}
            failures = {e.step_key for e in failed.all_events if e.event_type_value == "STEP_FAILURE"}
            assert failures == {"work[task_5]"}
            first_run_id = failed.run_id
        instance.run_storage.set_cursor_values({"test/plan": ""})
        options = ReexecutionOptions.from_failure(first_run_id, instance)
        with _run(instance, max_concurrent=8, reexecution_options=options) as second:
            assert second.success
            ran = {e.step_key for e in second.all_events if e.event_type_value == "STEP_SUCCESS"}
            assert ran == {"work[task_5]", "gather"}
            assert second.output_for_node("gather") == list(range(WIDTH))


@op
def patient(context, item: dict) -> dict:
    plan = context.instance.run_storage.get_cursor_values({"test/plan"}).get("test/plan", "")
    if plan == "terminate" and item["index"] == 0:
        os.kill(os.getpid(), signal.SIGINT)  # what the run worker receives when the run is terminated
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if step_interrupted():
            raise DagsterExecutionInterruptedError()
        time.sleep(0.02)
    return {"done": item["index"], "retry": 0}


@job(executor_def=threaded_executor, resource_defs={"io_manager": RunStorageIOManager()})
def terminable_fan_job():
    gather(fan_out().map(patient).collect())


def test_termination_interrupts_running_steps_fails_unstarted_ones_and_a_reexecution_from_failure_runs_them_all(tmp_path):
    config = {"execution": {"config": {"max_concurrent": 2}}}
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        instance.run_storage.set_cursor_values({"test/plan": "terminate"})
        with execute_job(reconstructable(terminable_fan_job), instance=instance, run_config=config, raise_on_error=False) as first:
            assert not first.success
            failed = {e.step_key for e in first.all_events if e.event_type_value == "STEP_FAILURE"}
            started = {e.step_key for e in first.all_events if e.event_type_value == "STEP_START"}
        mapped = {f"patient[task_{i}]" for i in range(WIDTH)}
        assert started == {"fan_out", "patient[task_0]", "patient[task_1]"}  # two at a time; nothing started after the signal
        assert failed == mapped  # the two interrupted, and the six that never started
        instance.run_storage.set_cursor_values({"test/plan": ""})
        options = ReexecutionOptions.from_failure(first.run_id, instance)
        with execute_job(reconstructable(terminable_fan_job), instance=instance, run_config=config, reexecution_options=options) as second:
            assert second.success
            ran = {e.step_key for e in second.all_events if e.event_type_value == "STEP_SUCCESS"}
            assert ran == mapped | {"gather"}
            assert second.output_for_node("gather") == list(range(WIDTH))
