"""Task and BatchRun status as pure functions: phases, conditions, retry backoff, timeouts, summaries.

Task phases: Pending (run submitted) -> Queued (waiting for a slot) -> Running -> Completed | Failed |
Stopped. A terminal phase is written once; only a rerun moves Failed or Stopped back to Running.

Every transition writes two conditions with the same reason and message:

- ``Succeeded``: ``Unknown`` until the Task ends, then ``True`` (Completed) or ``False`` (Failed, Stopped).
- ``Ready``: ``True`` only when Completed, ``False`` otherwise (the original's condition type, so
  ``kubectl wait --for=condition=Ready`` waits for success).

Reasons: ``RunSubmitted`` (Pending), ``Queued`` (or the caller's, Queued), ``Running``, ``Completed``,
and the caller's reason for retrying, Failed and Stopped (``AgentFailed``, ``DeadlineExceeded``,
``ContextRefNotFound``, ``StopRequested``...).

The Task builders take the current status (camelCase dict as stored, or None) and return the body of
a JSON merge patch of ``/status``: camelCase keys, RFC 3339 times, ``None`` to delete a field, and
the whole ``conditions`` list (a merge patch replaces lists). ``now`` defaults to the current time.
Between attempts the Task stays Running (``retrying``), its conditions carrying the failure reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from kubetask import vocabulary
from kubetask.api import BatchRunPhase, RetryPolicy, TaskPhase, TaskSpec, WorkspaceConfigSpec, parse_duration
from kubetask.api.batch import MAX_FAILED_TASKS_LISTED
from kubetask.domain import results
from kubetask.domain.results import ParsedResult

DEFAULT_INITIAL_DELAY = timedelta(seconds=10)
DEFAULT_FACTOR = 2.0
DEFAULT_MAX_DELAY = timedelta(minutes=10)
MAX_CONDITION_MESSAGE = 32768


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def rfc3339(dt: datetime) -> str:
    """``2026-12-01T00:00:00Z``: UTC, whole seconds (a naive datetime is taken as UTC)."""
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    type: str,
    status: str,
    reason: str,
    message: str,
    now: datetime,
    observed_generation: int | None = None,
) -> list[dict[str, Any]]:
    """A new list with condition ``type`` set; ``lastTransitionTime`` is kept when the status is unchanged."""
    previous = next((c for c in conditions or [] if c.get("type") == type), None)
    changed = previous is None or previous.get("status") != status
    condition: dict[str, Any] = {
        "type": type,
        "status": status,
        "reason": reason,
        "message": message[:MAX_CONDITION_MESSAGE],
        "lastTransitionTime": rfc3339(now)
        if previous is None or changed
        else previous.get("lastTransitionTime", rfc3339(now)),
    }
    if observed_generation is not None:
        condition["observedGeneration"] = observed_generation
    result = [condition if c.get("type") == type else dict(c) for c in conditions or []]
    return result if previous is not None else [*result, condition]


def is_terminal(phase: str | None) -> bool:
    return phase in vocabulary.TASK_TERMINAL


def may_transition(current: str | None, new: str) -> bool:
    """Whether a status write moving ``current`` to ``new`` may happen.

    A terminal phase is final (rewriting it is refused too, so the first outcome wins), except that a
    rerun moves Failed or Stopped to Running. Nothing goes back to Pending once it has run
    (a Queued Task that is admitted becomes Pending).
    """
    if is_terminal(current):
        return current in vocabulary.TASK_RERUNNABLE and new == TaskPhase.RUNNING.value
    if new == TaskPhase.PENDING.value:
        return current in (None, TaskPhase.PENDING.value, TaskPhase.QUEUED.value)
    return True


# --- Task status patches -----------------------------------------------------------------------

Status = Mapping[str, Any] | None


def _transition(
    current: Status,
    phase: TaskPhase,
    reason: str,
    message: str,
    at: datetime | None,
    generation: int | None = None,
) -> dict[str, Any]:
    current = current or {}
    at = at or datetime.now(UTC)
    generation = current.get("observedGeneration") if generation is None else generation
    succeeded = "True" if phase is TaskPhase.COMPLETED else "False" if phase.terminal else "Unknown"
    conditions = outcome_conditions(current.get("conditions"), succeeded, reason, message, at, generation)
    patch: dict[str, Any] = {"phase": phase.value, "message": message, "conditions": conditions}
    if generation is not None:
        patch["observedGeneration"] = generation
    if phase.terminal:
        patch["completionTime"] = rfc3339(at)
    return patch


def submitted(
    current: Status, *, run_id: str, run_url: str | None, generation: int | None, now: datetime | None = None
) -> dict[str, Any]:
    """Pending: the Dagster run is submitted."""
    patch = _transition(current, TaskPhase.PENDING, "RunSubmitted", f"Dagster run {run_id} submitted", now, generation)
    patch["dagsterRunId"] = run_id
    if run_url:
        patch["dagsterRunUrl"] = run_url
    return patch


def queued(current: Status, *, message: str, reason: str = "Queued", now: datetime | None = None) -> dict[str, Any]:
    """Queued: waiting for a concurrency slot (``message`` says which limit)."""
    return _transition(current, TaskPhase.QUEUED, reason, message, now)


def admission_pending(
    current: Status, *, job_name: str, attempt: int, message: str, now: datetime | None = None
) -> dict[str, Any]:
    """Queued, reason AdmissionPending: attempt ``attempt``'s Job exists, suspended, until Kueue admits it."""
    patch = _transition(current, TaskPhase.QUEUED, vocabulary.ADMISSION_PENDING, message, now)
    patch.update(jobName=job_name, attempt=attempt, waitingUntil=None)
    return patch


def running(
    current: Status,
    *,
    job_name: str,
    attempt: int,
    pod_name: str | None = None,
    started: datetime | None = None,
    generation: int | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Running: attempt ``attempt`` runs in ``job_name``. ``startTime`` (``started`` or now) is set once;
    the exit code, completion time and pod of an earlier attempt are cleared."""
    current = current or {}
    now = now or datetime.now(UTC)
    patch = _transition(
        current, TaskPhase.RUNNING, "Running", f"attempt {attempt} running in Job {job_name}", now, generation
    )
    patch.update(jobName=job_name, attempt=attempt, exitCode=None, completionTime=None, waitingUntil=None)
    if pod_name or current.get("attempt") != attempt:
        patch["podName"] = pod_name
    if not current.get("startTime"):
        patch["startTime"] = rfc3339(started or now)
    return patch


def waiting(
    current: Status, *, reason: str, until: datetime, message: str, run_id: str, now: datetime | None = None
) -> dict[str, Any]:
    """Queued for ``reason`` (RateLimited, QuotaExhausted) until ``until``. Counts one more wait of the
    run ``run_id`` (``waits``): waits are retries of its step, not attempts."""
    patch = _transition(current, TaskPhase.QUEUED, reason, message, now)
    patch.update(waitingUntil=rfc3339(until), waits=waits(current, run_id) + 1, dagsterRunId=run_id)
    return patch


def waits(current: Status, run_id: str) -> int:
    """How many times the run ``run_id`` has waited (a new run starts from 0)."""
    current = current or {}
    return int(current.get("waits") or 0) if current.get("dagsterRunId") == run_id else 0


def pod_started(current: Status, *, pod_name: str) -> dict[str, Any]:
    """The pod of the current attempt exists: record its name (phase and conditions unchanged).

    ``current`` is unused; it is there so that every builder is called the same way."""
    return {"podName": pod_name}


def retrying(
    current: Status, reason: str, message: str, *, exit_code: int | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Still Running: an attempt failed for ``reason`` and another one follows (``message`` says when)."""
    patch = _transition(current, TaskPhase.RUNNING, reason, message, now)
    if exit_code is not None:
        patch["exitCode"] = exit_code
    return patch


def completed(
    current: Status,
    *,
    exit_code: int,
    pod_name: str | None = None,
    message: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Completed: the agent exited successfully."""
    patch = _transition(
        current, TaskPhase.COMPLETED, "Completed", message or f"agent exited with code {exit_code}", now
    )
    patch["exitCode"] = exit_code
    if pod_name:
        patch["podName"] = pod_name
    return patch


def failed(
    current: Status, reason: str, message: str, *, exit_code: int | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Failed, for ``reason`` (a CamelCase condition reason)."""
    patch = _transition(current, TaskPhase.FAILED, reason, message, now)
    if exit_code is not None:
        patch["exitCode"] = exit_code
    return patch


def stopped(current: Status, reason: str, message: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Stopped by a person, a terminated run or a deletion, for ``reason`` (e.g. StopRequested, RunTerminated)."""
    return _transition(current, TaskPhase.STOPPED, reason, message, now)


# --- retries and timeouts ----------------------------------------------------------------------


def result_recorded(
    current: Status, parsed: ParsedResult, attempt: int, *, now: datetime | None = None
) -> dict[str, Any]:
    """The result of ``attempt`` in ``status.result``, its usage added to ``status.usage`` (once: a
    repeated write of the same attempt adds nothing), and the Result condition; ``{}`` when it wrote none."""
    if parsed.result is None and parsed.problem is None:
        return {}
    at = now or datetime.now(UTC)
    current = current or {}
    if parsed.result is not None:
        condition = ("True", vocabulary.RESULT_RECORDED, "the agent's result was recorded")
        patch: dict[str, Any] = {"result": parsed.result.to_k8s()}
        summed = current.get("usage") or {}
        if parsed.result.usage is not None and int(summed.get("throughAttempt") or 0) < attempt:
            usage = parsed.result.usage.to_k8s()
            patch["usage"] = results.add_usage(summed, usage) | {"throughAttempt": attempt}
    else:
        condition = ("False", vocabulary.INVALID_RESULT, parsed.problem or "")
        patch = {"result": None}
    patch["conditions"] = set_condition(current.get("conditions"), vocabulary.RESULT, *condition, at)
    return patch


def retry_delay(policy: RetryPolicy | None, retry_number: int) -> float:
    """Seconds to wait before retry ``retry_number`` (from 1): initialDelay * factor^(n-1), capped at maxDelay."""
    backoff = policy.backoff if policy is not None else None
    initial = parse_duration(backoff.initial_delay) if backoff and backoff.initial_delay else DEFAULT_INITIAL_DELAY
    factor = backoff.factor if backoff and backoff.factor is not None else DEFAULT_FACTOR
    cap = parse_duration(backoff.max_delay) if backoff and backoff.max_delay else DEFAULT_MAX_DELAY
    exponent = max(retry_number, 1) - 1
    try:
        delay = initial.total_seconds() * factor**exponent
    except OverflowError:
        delay = math.inf
    return min(delay, cap.total_seconds())


def effective_timeout_seconds(
    task_spec: TaskSpec, workspace_spec: WorkspaceConfigSpec, batch_default: str | None = None
) -> int | None:
    """Timeout of one attempt in whole seconds (rounded up): the Task's, the Batch's, the WorkspaceConfig's, or None."""
    text = task_spec.timeout or batch_default or workspace_spec.default_timeout
    if text is None:
        return None
    return max(1, math.ceil(parse_duration(text).total_seconds()))


def effective_retries(task_spec: TaskSpec, batch_default: RetryPolicy | None = None) -> RetryPolicy | None:
    """The Task's retry policy, else the Batch's default, else None (no retries)."""
    return task_spec.retries or batch_default


# --- BatchRun ----------------------------------------------------------------------------------


def batchrun_summary(
    tasks: Sequence[tuple[str, str | None, str | None]],
    total: int,
    paused: bool,
    stopped: bool,
) -> dict[str, Any]:
    """``phase``, ``progress`` and ``failedTasks`` of a BatchRun from its Tasks' ``(name, phase, reason)``.

    Tasks not created yet (``total`` minus those given) and Tasks without a phase count as pending.
    ``failedTasks`` lists the first 50 Failed Tasks in the given order. The phase is Stopped when a
    stop was requested; else, once every Task is terminal, Stopped when the budget kept any from
    starting (reason BudgetExceeded), Completed (none failed or stopped) or Failed; else Paused when
    paused; else Running once any Task left Pending; else Pending.
    """
    counts = dict.fromkeys(("queued", "running", "completed", "failed", "stopped"), 0)
    failed_tasks: list[dict[str, str]] = []
    for name, phase, reason in tasks:
        key = (phase or "").lower()
        if key in counts:
            counts[key] += 1
        if phase == TaskPhase.FAILED.value and len(failed_tasks) < MAX_FAILED_TASKS_LISTED:
            failed_tasks.append({"name": name, "reason": reason or "Failed"})
    total = max(total, len(tasks))
    pending = total - sum(counts.values())
    progress = {"total": total, "pending": pending, **counts}
    finished = pending == counts["queued"] == counts["running"] == 0
    if stopped or (finished and over_budget(tasks)):
        phase = BatchRunPhase.STOPPED
    elif finished:
        phase = BatchRunPhase.COMPLETED if counts["failed"] == counts["stopped"] == 0 else BatchRunPhase.FAILED
    elif paused:
        phase = BatchRunPhase.PAUSED
    elif pending < total:
        phase = BatchRunPhase.RUNNING
    else:
        phase = BatchRunPhase.PENDING
    return {"phase": phase.value, "progress": progress, "failedTasks": failed_tasks}


def over_budget(tasks: Sequence[tuple[str, str | None, str | None]]) -> bool:
    """Whether the BatchRun's budget kept any of its Tasks ``(name, phase, reason)`` from starting."""
    return any(phase == TaskPhase.STOPPED.value and reason == vocabulary.BUDGET_EXCEEDED for _, phase, reason in tasks)


def batchrun_outcome(
    run_id: str,
    run_status: str | None,
    *,
    current_phase: str | None,
    ready: Mapping[str, Any] | None,
    total: int | None,
    tasks: Sequence[tuple[str, str | None, str | None]],
    stop_requested: bool,
    ended_tasks: int = 0,
) -> dict[str, Any]:
    """How a BatchRun ended, once its Dagster run ``run_id`` has (``run_status`` None: Dagster has no
    such run): ``phase``, ``reason``, ``message``, ``progress`` and ``failedTasks`` (None when no Task
    was ever created), and ``failure_detail``: whether the caller should append the run's failure
    message (Dagster's words) to ``message``.

    ``tasks`` are the ``(name, phase, reason)`` of every Task of the BatchRun after the ones the run
    never finished were ended (``ended_tasks`` of them, Stopped with reason ``RunEnded``). A terminal
    phase an op wrote (``current_phase``) stands; a stop request or a canceled run is Stopped; else
    Stopped with reason BudgetExceeded when the budget kept Tasks from starting; else Completed when
    every Task completed, else Failed. Before any Task existed, a failure an op recorded on ``ready``
    stands too.
    """
    not_an_outcome = {
        vocabulary.RUN_SUBMITTED,
        vocabulary.DAGSTER_UNAVAILABLE,
        vocabulary.RERUN_STARTED,
        vocabulary.RUN_ADOPTED,
        None,
    }
    canceled = run_status == "CANCELED"
    stopped = stop_requested or canceled
    stop_reason = vocabulary.STOP_REQUESTED if stop_requested else vocabulary.RUN_CANCELED
    word = run_status if run_status is not None else "not found"
    failed, completed = BatchRunPhase.FAILED.value, BatchRunPhase.COMPLETED.value
    if total is None and not tasks:  # expand_batch never completed
        ready, detail = ready or {}, False
        if (
            current_phase in vocabulary.BATCHRUN_TERMINAL
            and ready.get("status") == "False"
            and (ready.get("reason") not in not_an_outcome)
        ):
            phase, reason = str(current_phase), str(ready.get("reason"))
            message = f"Dagster run {run_id} ended ({word}): {ready.get('message') or reason}"
        elif stopped:
            phase, reason = BatchRunPhase.STOPPED.value, stop_reason
            message = f"Dagster run {run_id} ended ({word}) before any Task was created"
        elif run_status is None:
            phase, reason = failed, vocabulary.RUN_NOT_FOUND
            message = f"Dagster has no run {run_id} (was the Dagster instance reset?)"
        else:
            phase, reason, detail = failed, vocabulary.RUN_FAILED, True
            message = f"Dagster run {run_id} ended ({word}) before any Task was created"
        return {
            "phase": phase,
            "reason": reason,
            "message": message,
            "progress": None,
            "failedTasks": None,
            "failure_detail": detail,
        }
    summary = batchrun_summary(tasks, total if total is not None else len(tasks), paused=False, stopped=stopped)
    counts = summary["progress"]
    if current_phase in vocabulary.BATCHRUN_TERMINAL:
        phase = str(current_phase)  # an op's outcome stands
    elif stopped:
        phase = BatchRunPhase.STOPPED.value
    else:
        phase = completed if summary["phase"] == completed else failed
    budget = not stopped and over_budget(tasks)
    if budget and phase != completed:
        phase, reason = BatchRunPhase.STOPPED.value, vocabulary.BUDGET_EXCEEDED
    elif phase == completed:
        reason = vocabulary.ALL_TASKS_COMPLETED
    elif phase == BatchRunPhase.STOPPED.value:
        reason = stop_reason
    elif counts["failed"] or counts["stopped"]:
        reason = vocabulary.TASKS_FAILED
    else:
        reason = vocabulary.RUN_NOT_FOUND if run_status is None else vocabulary.RUN_FAILED
    message = (
        f"Dagster run {run_id} ended ({word}): {counts['completed']} of {counts['total']} Tasks completed, "
        f"{counts['failed']} failed, {counts['stopped']} stopped"
    )
    if counts["pending"]:
        message += f", {counts['pending']} never created"
    if ended_tasks:
        message += f" ({ended_tasks} never finished and were marked Stopped, reason {vocabulary.RUN_ENDED})"
    return {
        "phase": phase,
        "reason": reason,
        "message": message,
        "progress": counts,
        "failedTasks": summary["failedTasks"],
        "failure_detail": reason == vocabulary.RUN_FAILED,
    }


def outcome_conditions(
    current: Sequence[Mapping[str, Any]] | None,
    succeeded: str,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """``Succeeded`` (``succeeded``) and ``Ready`` (True only when it succeeded) with one reason and
    message: the conditions of a Task's phase change and of a BatchRun's outcome."""
    ready = "True" if succeeded == "True" else "False"
    conditions = set_condition(current, vocabulary.SUCCEEDED, succeeded, reason, message, now, generation)
    return set_condition(conditions, vocabulary.READY, ready, reason, message, now, generation)
