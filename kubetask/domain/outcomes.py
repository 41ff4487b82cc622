"""How an attempt ended, read from its pod and its Job (pure: objects in, a ``PodOutcome`` out).

The objects are the kubernetes client's models (attribute access), as the run worker's caches hold
them. A pod that waits for a reason in ``STUCK_WAITING_REASONS`` will not start without a person
fixing something, so the attempt ends there instead of waiting for its timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetask import vocabulary

# A pod waiting for one of these will not start without a person fixing something.
STUCK_WAITING_REASONS = {
    "ErrImagePull": vocabulary.IMAGE_PULL_FAILED,
    "ImagePullBackOff": vocabulary.IMAGE_PULL_FAILED,
    "InvalidImageName": vocabulary.IMAGE_PULL_FAILED,
    "CreateContainerConfigError": vocabulary.CONTAINER_CONFIG_ERROR,
    "CreateContainerError": vocabulary.CONTAINER_CONFIG_ERROR,
    "RunContainerError": vocabulary.CONTAINER_CONFIG_ERROR,
}


NEVER_STARTED = frozenset({*STUCK_WAITING_REASONS.values(), vocabulary.POD_CREATION_FAILED})
"""Outcomes of an attempt whose agent never ran: its pod could not start (or not be created)."""


@dataclass
class PodOutcome:
    """How one attempt's pod ended."""

    succeeded: bool
    reason: str
    message: str
    pod_name: str | None = None
    exit_code: int | None = None
    result_text: str | None = None
    """What the agent wrote to $KUBETASK_RESULT_FILE (its termination message), unparsed."""


def job_outcome(job: Any, job_name: str, last_pod: str | None) -> PodOutcome | None:
    """The attempt's result read from its Job: deleted, failed (deadline) or complete; else None."""
    if job is None or job.metadata.deletion_timestamp is not None:
        return PodOutcome(
            False, vocabulary.JOB_DELETED, f"Job {job_name} was deleted before its pod finished", last_pod
        )
    for cond in (job.status.conditions if job.status else None) or []:
        if cond.type == "Failed" and cond.status == "True":
            reason = vocabulary.TIMEOUT if cond.reason == "DeadlineExceeded" else (cond.reason or vocabulary.JOB_FAILED)
            return PodOutcome(False, reason, f"Job {job_name} failed: {cond.message or cond.reason}", last_pod)
        if cond.type == "Complete" and cond.status == "True":
            return PodOutcome(True, vocabulary.COMPLETED, f"Job {job_name} completed", last_pod, 0)
    return None


def past_deadline(job: Any) -> bool:
    """The Job's activeDeadlineSeconds ran out. Its controller marks that (FailureTarget, then Failed)
    before it kills the pod, so a pod that ends killed by the deadline is seen after this."""
    return any(
        cond.type in ("Failed", "FailureTarget") and cond.status == "True" and cond.reason == "DeadlineExceeded"
        for cond in (job.status.conditions if job is not None and job.status else None) or []
    )


def timed_out(outcome: PodOutcome, job_name: str) -> PodOutcome:
    """A failed attempt whose Job ran out of time: Timeout, whatever the killed agent's exit code."""
    return PodOutcome(
        False,
        vocabulary.TIMEOUT,
        f"Job {job_name} exceeded its deadline ({outcome.message})",
        outcome.pod_name,
        outcome.exit_code,
    )


def pod_outcome(pod: Any) -> PodOutcome | None:
    """The attempt's result if the pod has ended or cannot start; None while it may still run."""
    name = pod.metadata.name
    status = pod.status
    for init in status.init_container_statuses or []:
        term = init.state.terminated if init.state else None
        if term is not None and term.exit_code != 0:
            return PodOutcome(
                False,
                vocabulary.INIT_CONTAINER_FAILED,
                f"init container {init.name} exited with {term.exit_code} ({term.reason})",
                name,
                term.exit_code,
            )
        waiting = init.state.waiting if init.state else None
        if waiting is not None and waiting.reason in STUCK_WAITING_REASONS:
            return PodOutcome(
                False,
                STUCK_WAITING_REASONS[waiting.reason],
                f"init container {init.name}: {waiting.reason}: {waiting.message or ''}".strip(),
                name,
            )
    agent = next((c for c in status.container_statuses or [] if c.name == "agent"), None)
    if agent is not None and agent.state is not None:
        if agent.state.waiting is not None and agent.state.waiting.reason in STUCK_WAITING_REASONS:
            w = agent.state.waiting
            return PodOutcome(False, STUCK_WAITING_REASONS[w.reason], f"{w.reason}: {w.message or ''}".strip(), name)
        term = agent.state.terminated
        if term is not None and status.phase in ("Succeeded", "Failed"):
            if term.exit_code == 0:
                return PodOutcome(True, vocabulary.COMPLETED, "the agent exited with 0", name, 0, term.message)
            return PodOutcome(
                False,
                vocabulary.AGENT_FAILED,
                f"the agent exited with {term.exit_code} ({term.reason or 'Error'})",
                name,
                term.exit_code,
                term.message,
            )
    if status.phase == "Failed":
        return PodOutcome(False, status.reason or vocabulary.POD_FAILED, status.message or "the pod failed", name)
    if status.phase == "Succeeded":
        return PodOutcome(True, vocabulary.COMPLETED, "the pod succeeded", name, 0)
    return None
