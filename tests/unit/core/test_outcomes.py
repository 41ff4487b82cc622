"""How an attempt ended, read from kubernetes client models of its pod and its Job (``kubetask.domain.outcomes``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from kubernetes.client import (
    V1ContainerState,
    V1ContainerStateRunning,
    V1ContainerStateTerminated,
    V1ContainerStateWaiting,
    V1ContainerStatus,
    V1Job,
    V1JobCondition,
    V1JobStatus,
    V1ObjectMeta,
    V1Pod,
    V1PodStatus,
)

from kubetask import vocabulary
from kubetask.domain.outcomes import (
    STUCK_WAITING_REASONS,
    PodOutcome,
    job_outcome,
    past_deadline,
    pod_outcome,
    timed_out,
)

POD = "t-job-1-abcde"


def _status(name: str, *, waiting: tuple[str, str | None] | None = None, terminated: tuple[int, str | None] | None = None,
            running: bool = False) -> V1ContainerStatus:
    state = V1ContainerState(
        waiting=V1ContainerStateWaiting(reason=waiting[0], message=waiting[1]) if waiting else None,
        terminated=V1ContainerStateTerminated(exit_code=terminated[0], reason=terminated[1]) if terminated else None,
        running=V1ContainerStateRunning() if running else None,
    )
    return V1ContainerStatus(name=name, state=state, image="img", image_id="", ready=False, restart_count=0)


def _pod(phase: str | None = "Pending", *, init=None, containers=None, reason=None, message=None) -> V1Pod:
    return V1Pod(
        metadata=V1ObjectMeta(name=POD),
        status=V1PodStatus(
            phase=phase, init_container_statuses=init, container_statuses=containers, reason=reason, message=message
        ),
    )


# --- the pod -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("waiting", "reason"),
    [
        ("ErrImagePull", vocabulary.IMAGE_PULL_FAILED),
        ("ImagePullBackOff", vocabulary.IMAGE_PULL_FAILED),
        ("InvalidImageName", vocabulary.IMAGE_PULL_FAILED),
        ("CreateContainerConfigError", vocabulary.CONTAINER_CONFIG_ERROR),
        ("CreateContainerError", vocabulary.CONTAINER_CONFIG_ERROR),
        ("RunContainerError", vocabulary.CONTAINER_CONFIG_ERROR),
    ],
)
def test_agent_stuck_waiting_ends_the_attempt(waiting, reason):
    pod = _pod(containers=[_status("agent", waiting=(waiting, 'secret "creds" not found'))])
    outcome = pod_outcome(pod)
    assert outcome is not None
    assert (outcome.succeeded, outcome.reason, outcome.pod_name, outcome.exit_code) == (False, reason, POD, None)
    assert outcome.message == f'{waiting}: secret "creds" not found'


def test_stuck_reasons_are_exactly_the_documented_six():
    assert set(STUCK_WAITING_REASONS.values()) == {vocabulary.IMAGE_PULL_FAILED, vocabulary.CONTAINER_CONFIG_ERROR}
    assert len(STUCK_WAITING_REASONS) == 6


def test_stuck_waiting_without_message_has_no_trailing_colon_space():
    outcome = pod_outcome(_pod(containers=[_status("agent", waiting=("ImagePullBackOff", None))]))
    assert outcome is not None and outcome.message == "ImagePullBackOff:"


@pytest.mark.parametrize("waiting", ["ContainerCreating", "PodInitializing"])
def test_agent_waiting_for_an_ordinary_reason_is_still_running(waiting):
    assert pod_outcome(_pod(containers=[_status("agent", waiting=(waiting, None))])) is None


def test_init_container_failed_carries_its_exit_code():
    pod = _pod(init=[_status("git-clone", terminated=(128, "Error"))], containers=[_status("agent", waiting=("PodInitializing", None))])
    outcome = pod_outcome(pod)
    assert outcome is not None
    assert (outcome.succeeded, outcome.reason, outcome.exit_code, outcome.pod_name) == (
        False, vocabulary.INIT_CONTAINER_FAILED, 128, POD,
    )
    assert outcome.message == "init container git-clone exited with 128 (Error)"


def test_init_container_that_succeeded_is_not_a_failure():
    pod = _pod("Running", init=[_status("tools", terminated=(0, "Completed"))], containers=[_status("agent", running=True)])
    assert pod_outcome(pod) is None


def test_init_container_stuck_pulling_its_image():
    pod = _pod(init=[_status("tools", waiting=("ErrImagePull", "not found"))])
    outcome = pod_outcome(pod)
    assert outcome is not None
    assert (outcome.reason, outcome.message) == (vocabulary.IMAGE_PULL_FAILED, "init container tools: ErrImagePull: not found")


def test_init_container_failure_wins_over_the_agent():
    pod = _pod("Failed", init=[_status("tools", terminated=(2, None))], containers=[_status("agent", terminated=(1, "Error"))])
    assert pod_outcome(pod).reason == vocabulary.INIT_CONTAINER_FAILED


def test_agent_failed_carries_its_exit_code():
    outcome = pod_outcome(_pod("Failed", containers=[_status("agent", terminated=(3, "Error"))]))
    assert outcome is not None
    assert (outcome.succeeded, outcome.reason, outcome.exit_code, outcome.pod_name) == (False, vocabulary.AGENT_FAILED, 3, POD)
    assert outcome.message == "the agent exited with 3 (Error)"


def test_agent_failed_without_a_reason_says_error():
    outcome = pod_outcome(_pod("Failed", containers=[_status("agent", terminated=(137, None))]))
    assert outcome.message == "the agent exited with 137 (Error)" and outcome.exit_code == 137


def test_agent_completed():
    outcome = pod_outcome(_pod("Succeeded", containers=[_status("agent", terminated=(0, "Completed"))]))
    assert outcome is not None
    assert (outcome.succeeded, outcome.reason, outcome.exit_code, outcome.pod_name) == (True, vocabulary.COMPLETED, 0, POD)


def test_agent_terminated_while_the_pod_still_runs_is_not_final():
    # A sidecar keeps the pod Running: the agent's exit only counts once the pod has a final phase.
    pod = _pod("Running", containers=[_status("agent", terminated=(0, "Completed")), _status("sidecar", running=True)])
    assert pod_outcome(pod) is None


def test_only_the_agent_container_counts():
    pod = _pod("Running", containers=[_status("sidecar", waiting=("CreateContainerConfigError", "x")), _status("agent", running=True)])
    assert pod_outcome(pod) is None


def test_pod_failed_without_container_statuses_uses_the_pod_reason():
    outcome = pod_outcome(_pod("Failed", reason="Evicted", message="the node ran out of memory"))
    assert (outcome.succeeded, outcome.reason, outcome.message, outcome.pod_name) == (
        False, "Evicted", "the node ran out of memory", POD,
    )


def test_pod_failed_without_reason_is_pod_failed():
    outcome = pod_outcome(_pod("Failed"))
    assert (outcome.reason, outcome.message) == (vocabulary.POD_FAILED, "the pod failed")


def test_pod_succeeded_without_container_statuses():
    outcome = pod_outcome(_pod("Succeeded"))
    assert (outcome.succeeded, outcome.reason, outcome.exit_code) == (True, vocabulary.COMPLETED, 0)


@pytest.mark.parametrize("phase", ["Pending", "Running", None])
def test_still_running_is_none(phase):
    assert pod_outcome(_pod(phase, containers=[_status("agent", running=True)])) is None
    assert pod_outcome(_pod(phase)) is None


# --- the Job -------------------------------------------------------------------------------------


def _job(*conditions: V1JobCondition, deleting: bool = False, status: bool = True) -> V1Job:
    meta = V1ObjectMeta(name="t-job-1", deletion_timestamp=datetime(2026, 1, 1, tzinfo=UTC) if deleting else None)
    return V1Job(metadata=meta, status=V1JobStatus(conditions=list(conditions)) if status else None)


def _cond(type_: str, status: str = "True", reason: str | None = None, message: str | None = None) -> V1JobCondition:
    return V1JobCondition(type=type_, status=status, reason=reason, message=message)


def test_job_gone_is_job_deleted():
    outcome = job_outcome(None, "t-job-1", "last-pod")
    assert (outcome.succeeded, outcome.reason, outcome.pod_name) == (False, vocabulary.JOB_DELETED, "last-pod")
    assert "t-job-1" in outcome.message


def test_job_being_deleted_is_job_deleted():
    outcome = job_outcome(_job(_cond("Complete"), deleting=True), "t-job-1", None)
    assert outcome.reason == vocabulary.JOB_DELETED and not outcome.succeeded


def test_deadline_exceeded_is_timeout():
    outcome = job_outcome(_job(_cond("Failed", reason="DeadlineExceeded", message="Job was active longer than specified deadline")),
                          "t-job-1", "p")
    assert (outcome.succeeded, outcome.reason, outcome.pod_name) == (False, vocabulary.TIMEOUT, "p")
    assert outcome.message == "Job t-job-1 failed: Job was active longer than specified deadline"


def test_failed_job_keeps_its_reason():
    outcome = job_outcome(_job(_cond("Failed", reason="BackoffLimitExceeded")), "t-job-1", None)
    assert outcome.reason == "BackoffLimitExceeded" and outcome.message == "Job t-job-1 failed: BackoffLimitExceeded"


def test_failed_job_without_reason_is_job_failed():
    outcome = job_outcome(_job(_cond("Failed")), "t-job-1", None)
    assert outcome.reason == vocabulary.JOB_FAILED and not outcome.succeeded


def test_complete_job():
    outcome = job_outcome(_job(_cond("Complete")), "t-job-1", "p")
    assert (outcome.succeeded, outcome.reason, outcome.exit_code, outcome.pod_name) == (True, vocabulary.COMPLETED, 0, "p")


@pytest.mark.parametrize(
    "job",
    [
        _job(),
        _job(status=False),
        _job(_cond("Failed", status="False"), _cond("Complete", status="False")),
        _job(_cond("Suspended")),
    ],
)
def test_running_job_is_none(job):
    assert job_outcome(job, "t-job-1", None) is None


@pytest.mark.parametrize("condition", ["FailureTarget", "Failed"])
def test_a_pod_killed_by_the_jobs_deadline_is_a_timeout_not_an_agent_failure(condition):
    assert past_deadline(_job(_cond(condition, reason="DeadlineExceeded")))
    assert not past_deadline(_job(_cond(condition, reason="BackoffLimitExceeded")))
    assert not past_deadline(_job(_cond(condition, status="False", reason="DeadlineExceeded")))
    assert not past_deadline(None)
    killed = PodOutcome(False, vocabulary.AGENT_FAILED, "the agent exited with 143 (Error)", POD, 143)
    outcome = timed_out(killed, "t-job-1")
    assert (outcome.succeeded, outcome.reason, outcome.exit_code, outcome.pod_name) == (False, vocabulary.TIMEOUT, 143, POD)
    assert outcome.message == "Job t-job-1 exceeded its deadline (the agent exited with 143 (Error))"


def test_the_agents_termination_message_is_its_result_text():
    for phase, code in (("Succeeded", 0), ("Failed", 3)):
        status = _status("agent", terminated=(code, "Completed" if code == 0 else "Error"))
        status.state.terminated.message = '{"summary": "done"}'
        outcome = pod_outcome(_pod(phase, containers=[status]))
        assert outcome is not None and outcome.result_text == '{"summary": "done"}'
    assert pod_outcome(_pod("Succeeded", containers=[_status("agent", terminated=(0, "Completed"))])).result_text is None
