"""Outputs go through Dagster's run storage: a re-execution from failure, in a fresh process, reads
the skipped fan-out step's outputs from the parent run."""

from dagster import (
    DagsterInstance,
    DynamicOut,
    DynamicOutput,
    Failure,
    ReexecutionOptions,
    execute_job,
    in_process_executor,
    job,
    op,
    reconstructable,
)

from kubetask_dagster.resources import KEY_PREFIX, RunStorageIOManager

CALLS: list[str] = []


@op(out=DynamicOut(dict))
def fan_out():
    for i in range(3):
        yield DynamicOutput({"index": i}, mapping_key=f"task_{i}")


@op
def work(context, item: dict) -> dict:
    marker = context.instance.run_storage.get_cursor_values({"test/fail"}).get("test/fail")
    if marker == str(item["index"]):
        raise Failure("planned failure")
    return {"done": item["index"]}


@op
def gather(results: list) -> int:
    return sum(r["done"] for r in results)


@job(executor_def=in_process_executor, resource_defs={"io_manager": RunStorageIOManager()})
def fan_job():
    gather(fan_out().map(work).collect())


def test_reexecution_from_failure_reads_the_parent_outputs_from_run_storage(tmp_path):
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        instance.run_storage.set_cursor_values({"test/fail": "1"})
        with execute_job(reconstructable(fan_job), instance=instance, raise_on_error=False) as first:
            assert not first.success
        keys = [k for k in instance.run_storage.get_cursor_values({f"{KEY_PREFIX}{first.run_id}/fan_out/result/task_{i}" for i in range(3)})]
        assert len(keys) == 3
        instance.run_storage.set_cursor_values({"test/fail": "none"})
        options = ReexecutionOptions.from_failure(first.run_id, instance)
        with execute_job(reconstructable(fan_job), instance=instance, reexecution_options=options) as second:
            assert second.success
            assert second.output_for_node("gather") == 0 + 1 + 2
            ran = {e.step_key for e in second.all_events if e.event_type_value == "STEP_SUCCESS"}
            assert ran == {"work[task_1]", "gather"}  # fan_out's outputs came from the parent run
