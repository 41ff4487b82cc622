"""The run workers' structured logs: the formatter that deploy/dagster/values.yaml configures names the run,
step, Task and attempt on every line, in a real Dagster run with that handler configuration too."""

from __future__ import annotations

import io
import json
import logging
import threading
from pathlib import Path

import yaml

from kubetask.logformat import JsonFormatter
from kubetask_dagster import logs

VALUES = Path(__file__).resolve().parents[3] / "deploy" / "dagster" / "values.yaml"


def _formatter_of_the_chart_values() -> logging.Formatter:
    config = yaml.safe_load(VALUES.read_text())["pythonLogs"]["dagsterHandlerConfig"]
    spec = config["formatters"]["json"]
    module, _, name = spec["()"].rpartition(".")
    formatter = getattr(__import__(module, fromlist=[name]), name)()
    assert config["handlers"]["json"]["formatter"] == "json"
    return formatter


def _record(message: str, **extra) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "dagster", "levelno": logging.INFO, "levelname": "INFO", "msg": message})
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_a_line_of_a_step_names_its_run_step_task_and_attempt():
    formatter = _formatter_of_the_chart_values()
    meta = {"run_id": "r-1", "job_name": "task_job", "step_key": "run_agent", "orig_message": "Job created",
            "dagster_event": object()}
    with logs.task_logging("team-a", "fix-bug"):
        logs.bind_attempt(2)
        line = json.loads(formatter.format(_record("task_job - r-1 - run_agent - Job created", dagster_meta=meta)))
    assert line["message"] == "Job created" and line["level"] == "INFO"
    assert (line["run_id"], line["job"], line["step"]) == ("r-1", "task_job", "run_agent")
    assert (line["task"], line["attempt"]) == ("team-a/fix-bug", 2)
    assert "dagster_event" not in line  # Dagster's event object stays out of the line
    # outside a Task: no task field
    assert "task" not in json.loads(formatter.format(_record("daemon tick")))


def test_each_thread_of_a_batchrun_names_its_own_task():
    formatter = _formatter_of_the_chart_values()
    lines: list[dict] = []
    barrier = threading.Barrier(2)

    def step(name: str, attempt: int) -> None:
        with logs.task_logging("team-a", name):
            logs.bind_attempt(attempt)
            barrier.wait()  # both bound at once
            lines.append(json.loads(formatter.format(_record(f"working on {name}"))))

    threads = [threading.Thread(target=step, args=(f"task-{i}", i + 1)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted((line["task"], line["attempt"], line["message"]) for line in lines) == [
        ("team-a/task-0", 1, "working on task-0"), ("team-a/task-1", 2, "working on task-1")]
    assert logs.bound() == {}


def test_the_bridges_json_lines_carry_extras_and_exceptions():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.bridge.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("reconcile %s failed", "team/t", extra={"k8s_ref": {"name": "t"}})
    line = json.loads(stream.getvalue())
    assert line["message"] == "reconcile team/t failed" and line["level"] == "ERROR"
    assert line["k8s_ref"] == {"name": "t"} and "ValueError: boom" in line["exception"]


def test_a_dagster_run_with_the_handler_config_writes_json_lines_naming_the_task(tmp_path):
    from dagster import instance_for_test, job, op

    config = yaml.safe_load(VALUES.read_text())["pythonLogs"]["dagsterHandlerConfig"]
    out = tmp_path / "run-worker.log"
    config["handlers"]["json"] = {"class": "logging.FileHandler", "filename": str(out), "formatter": "json"}

    @op
    def agent_step(context) -> None:
        with logs.task_logging("team-a", "fix-bug"):
            logs.bind_attempt(1)
            context.log.info("Job fix-bug-job-1 created")

    @job
    def logged_job():
        agent_step()

    with instance_for_test(overrides={"python_logs": {"dagster_handler_config": config}}) as instance:
        result = logged_job.execute_in_process(instance=instance)
    assert result.success
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    ours = [line for line in lines if line["message"] == "Job fix-bug-job-1 created"]
    assert len(ours) == 1 and ours[0]["task"] == "team-a/fix-bug" and ours[0]["attempt"] == 1
    assert ours[0]["run_id"] == result.run_id and ours[0]["step"] == "agent_step" and ours[0]["job"] == "logged_job"
    assert any(line.get("step") == "agent_step" and "task" not in line for line in lines)  # Dagster's own events
