"""PromptRunCoordinator on a real Dagster instance: a submitted run is launched at once while the run
queue's limits leave room, and enqueued (for the daemon) when they do not."""

from __future__ import annotations

import pytest
from dagster._core.instance_for_test import instance_for_test
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.run_coordinator.base import SubmitRunContext
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.test_utils import create_run_for_test

from kubetask_dagster.execution.run_coordinator import PromptRunCoordinator

COORDINATOR = {
    "module": "kubetask_dagster.execution.run_coordinator",
    "class": "PromptRunCoordinator",
    "config": {
        "max_concurrent_runs": 2,
        "tag_concurrency_limits": [{"key": "kind", "value": "BatchRun", "limit": 1}],
    },
}
LAUNCHER = {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"}
ORIGIN = RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("kubetask"), "__repository__"), "task_job")


@pytest.fixture
def instance():
    with instance_for_test(overrides={"run_coordinator": COORDINATOR, "run_launcher": LAUNCHER}) as inst:
        assert isinstance(inst.run_coordinator, PromptRunCoordinator)
        yield inst


def submit(instance, **tags: str) -> DagsterRunStatus:
    run = create_run_for_test(instance, job_name="task_job", tags=tags, remote_job_origin=ORIGIN)
    return instance.run_coordinator.submit_run(SubmitRunContext(run, workspace=None)).status


def finish_one(instance) -> None:
    run = next(r for r in instance.get_runs() if r.status == DagsterRunStatus.STARTING)
    instance.report_run_failed(run)


def test_runs_are_launched_at_once_up_to_max_concurrent_runs(instance):
    assert submit(instance) == DagsterRunStatus.STARTING
    assert submit(instance) == DagsterRunStatus.STARTING
    assert submit(instance) == DagsterRunStatus.QUEUED
    assert len(instance.run_launcher.queue()) == 2


def test_a_run_waits_behind_the_queue_even_when_a_slot_is_free(instance):
    submit(instance)
    submit(instance)
    assert submit(instance) == DagsterRunStatus.QUEUED
    finish_one(instance)  # a slot is free, but the queued run is first in line: the daemon starts it
    assert submit(instance) == DagsterRunStatus.QUEUED
    assert len(instance.run_launcher.queue()) == 2


def test_a_tag_concurrency_limit_sends_the_run_to_the_queue(instance):
    assert submit(instance, kind="BatchRun") == DagsterRunStatus.STARTING
    assert submit(instance, kind="BatchRun") == DagsterRunStatus.QUEUED


def test_a_launcher_that_is_not_warm_leaves_the_run_to_the_daemon(instance, monkeypatch):
    monkeypatch.setattr(type(instance.run_launcher), "warm", lambda self: False, raising=False)
    assert submit(instance) == DagsterRunStatus.QUEUED
    assert instance.run_launcher.queue() == []


def test_a_failing_check_enqueues_rather_than_failing_the_submission(instance, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("storage hiccup")

    monkeypatch.setattr(instance, "get_runs_count", broken)
    assert submit(instance) == DagsterRunStatus.QUEUED
