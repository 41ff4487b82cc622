"""ForkingRunLauncher on a real Dagster instance: a run executes in a fork of the zygote, with its
pid recorded; terminate interrupts it; a killed worker fails the health check."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import launcher_jobs
import pytest
from dagster import DagsterInstance, reconstructable
from dagster._core.instance_for_test import instance_for_test
from dagster._core.storage.dagster_run import DagsterRunStatus

from kubetask_dagster.local.launcher import HOST_TAG, PID_TAG, ForkingRunLauncher, WorkerStatus


@pytest.fixture
def instance(monkeypatch):
    # the zygote and its workers import the test's jobs (and this checkout) by module name
    here = Path(__file__).resolve().parent
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(here), str(here.parents[2]), os.environ.get("PYTHONPATH", "")]))
    with instance_for_test(overrides={"run_launcher": {"module": "kubetask_dagster.local.launcher", "class": "ForkingRunLauncher"}}) as inst:
        yield inst
        inst.run_launcher.dispose()


def launch(instance: DagsterInstance, job_fn, marker: Path):
    recon = reconstructable(job_fn)
    run = instance.create_run_for_job(
        job_def=job_fn, run_config={"ops": {next(iter(job_fn.nodes_in_topological_order)).name: {"config": {"path": str(marker)}}}},
        job_code_origin=recon.get_python_origin(),
    )
    instance.launch_run(run.run_id, workspace=None)
    return run.run_id


def wait_until(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_a_run_executes_in_a_forked_worker_and_succeeds(instance, tmp_path):
    assert isinstance(instance.run_launcher, ForkingRunLauncher)
    marker = tmp_path / "pid"
    run_id = launch(instance, launcher_jobs.quick_job, marker)
    run = wait_until(lambda: (r := instance.get_run_by_id(run_id)).is_finished and r)
    assert run.status == DagsterRunStatus.SUCCESS
    worker = int(marker.read_text())
    assert run.tags[PID_TAG] == str(worker) and run.tags[HOST_TAG]
    assert worker != os.getpid()
    zygote = instance.run_launcher._zygote
    assert zygote is not None and zygote.poll() is None
    # the same zygote forks the next run
    second = launch(instance, launcher_jobs.quick_job, tmp_path / "pid2")
    assert wait_until(lambda: (r := instance.get_run_by_id(second)).is_finished and r).status == DagsterRunStatus.SUCCESS
    assert instance.run_launcher._zygote is zygote


def test_terminate_interrupts_the_worker(instance, tmp_path):
    marker = tmp_path / "pid"
    run_id = launch(instance, launcher_jobs.slow_job, marker)
    wait_until(marker.exists)
    run = instance.get_run_by_id(run_id)
    assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    assert instance.run_launcher.terminate(run_id)
    run = wait_until(lambda: (r := instance.get_run_by_id(run_id)).is_finished and r, timeout=30)
    assert run.status == DagsterRunStatus.CANCELED


def test_a_killed_worker_fails_the_health_check(instance, tmp_path):
    marker = tmp_path / "pid"
    run_id = launch(instance, launcher_jobs.slow_job, marker)
    worker = int(wait_until(lambda: marker.exists() and marker.read_text()))
    os.kill(worker, signal.SIGKILL)
    run = instance.get_run_by_id(run_id)
    result = wait_until(lambda: (h := instance.run_launcher.check_run_worker_health(run)).status == WorkerStatus.FAILED and h, timeout=10)
    assert str(worker) in result.msg


def test_a_dead_zygote_is_replaced(instance, tmp_path):
    run_id = launch(instance, launcher_jobs.quick_job, tmp_path / "pid")
    wait_until(lambda: instance.get_run_by_id(run_id).is_finished)
    old = instance.run_launcher._zygote
    old.kill()
    old.wait()
    second = launch(instance, launcher_jobs.quick_job, tmp_path / "pid2")
    assert wait_until(lambda: (r := instance.get_run_by_id(second)).is_finished and r).status == DagsterRunStatus.SUCCESS
    assert instance.run_launcher._zygote is not old


def test_a_zygote_that_took_the_request_and_died_is_not_asked_again(instance, tmp_path, monkeypatch):
    """Asking a second zygote could start the same run twice; the launch fails instead."""
    from dagster._core.errors import DagsterLaunchFailedError

    import kubetask_dagster.local.launcher as launcher_module

    requests = tmp_path / "requests"
    monkeypatch.setenv("SILENT_ZYGOTE_LOG", str(requests))
    monkeypatch.setattr(launcher_module, "ZYGOTE_MODULE", "silent_zygote")
    with pytest.raises(DagsterLaunchFailedError):
        launch(instance, launcher_jobs.quick_job, tmp_path / "pid")
    assert len(requests.read_text().splitlines()) == 1


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[1])


def test_another_process_launches_through_the_running_zygote(instance, tmp_path):
    """The webserver's launcher forks through the daemon's zygote: its workers stay in the daemon's tree."""
    other = DagsterInstance.from_ref(instance.get_ref())  # a second process's view of the same instance
    try:
        assert not other.run_launcher.warm()  # no zygote yet: its runs go to the queue
        first = launch(instance, launcher_jobs.quick_job, tmp_path / "pid")
        wait_until(lambda: instance.get_run_by_id(first).is_finished)
        zygote = instance.run_launcher._zygote
        assert other.run_launcher.warm()

        marker = tmp_path / "pid2"
        run_id = launch(other, launcher_jobs.slow_job, marker)
        worker = int(wait_until(lambda: marker.exists() and marker.read_text()))
        assert other.run_launcher._zygote is None  # it started none of its own
        assert parent_of(worker) == zygote.pid
        assert other.run_launcher.check_run_worker_health(other.get_run_by_id(run_id)).status == WorkerStatus.RUNNING
        assert other.run_launcher.terminate(run_id)
        assert wait_until(lambda: (r := instance.get_run_by_id(run_id)).is_finished and r, timeout=30).status == DagsterRunStatus.CANCELED

        instance.run_launcher.dispose()  # the zygote ends with its owner and takes its socket along
        assert not other.run_launcher.warm()
        assert not (Path(instance.root_directory) / "run-worker-zygote.sock").exists()
    finally:
        other.dispose()


def test_the_local_daemon_starts_the_zygote_before_the_first_launch(instance, tmp_path):
    """kubetask_dagster.local.daemon: a zygote answers before any run is launched (the webserver launches
    at once), and the daemon's own launcher forks through it instead of starting a second one."""
    from kubetask_dagster.local import daemon

    early = DagsterInstance.from_ref(instance.get_ref())  # the daemon process's early instance
    try:
        assert not instance.run_launcher.warm()
        assert daemon.start_zygote(early) == daemon.READY
        assert instance.run_launcher.warm()
        marker = tmp_path / "pid"
        run_id = launch(instance, launcher_jobs.slow_job, marker)
        worker = int(wait_until(lambda: marker.exists() and marker.read_text()))
        assert instance.run_launcher._zygote is None
        assert parent_of(worker) == early.run_launcher._zygote.pid
        assert instance.run_launcher.terminate(run_id)
        assert wait_until(lambda: (r := instance.get_run_by_id(run_id)).is_finished and r, timeout=30).status == DagsterRunStatus.CANCELED
    finally:
        early.run_launcher.dispose()
        early.dispose()


def test_the_local_daemon_starts_no_zygote_for_another_launcher():
    from kubetask_dagster.local import daemon

    with instance_for_test() as other:
        assert daemon.start_zygote(other) == daemon.NO_ZYGOTE


def test_only_the_owner_may_ask_the_zygote_for_a_worker(instance, tmp_path):
    run_id = launch(instance, launcher_jobs.quick_job, tmp_path / "pid")
    wait_until(lambda: instance.get_run_by_id(run_id).is_finished)
    sock = Path(instance.root_directory) / "run-worker-zygote.sock"
    assert sock.is_socket() and sock.stat().st_mode & 0o777 == 0o600


def test_terminating_a_run_whose_worker_has_exited_cancels_it_at_once(instance, tmp_path):
    """The bridge's terminate can read a run just before its worker records the end and exits: nobody
    is left to turn CANCELING into CANCELED, so terminate does."""
    marker = tmp_path / "pid"
    run_id = launch(instance, launcher_jobs.slow_job, marker)
    worker = int(wait_until(lambda: marker.exists() and marker.read_text()))
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2])
    assert not instance.run_launcher.terminate(run_id)
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.CANCELED


def test_an_interrupted_worker_that_exits_without_recording_the_cancellation_gets_it_recorded(instance, tmp_path):
    """The worker recorded its run's end just as the interrupt came; terminate's CANCELING write hid it."""
    run_id = launch(instance, launcher_jobs.quick_job, tmp_path / "pid")
    wait_until(lambda: instance.get_run_by_id(run_id).is_finished)
    worker = int((tmp_path / "pid").read_text())  # exited by now
    instance.report_run_canceling(instance.get_run_by_id(run_id))
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.CANCELING
    instance.run_launcher._cancel_once_exited(run_id, worker)
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.CANCELED
