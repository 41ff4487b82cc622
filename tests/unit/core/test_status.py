"""Status helpers: conditions, phase transitions, patches, retry backoff, timeouts, BatchRun summary."""

from datetime import UTC, datetime, timedelta, timezone

from kubetask.api import BatchRunStatus, RetryPolicy, TaskSpec, TaskStatus, WorkspaceConfigSpec
from kubetask.domain import status

T0 = datetime(2026, 12, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
T2 = T0 + timedelta(minutes=9)


def conditions_by_type(patch):
    return {c["type"]: c for c in patch["conditions"]}


def apply(current, patch):
    """A JSON merge patch of the status (None deletes), as the API server applies it."""
    merged = dict(current or {})
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def test_now_and_rfc3339():
    assert status.now().tzinfo is not None
    assert status.rfc3339(T0) == "2026-12-01T00:00:00Z"
    assert status.rfc3339(datetime(2026, 12, 1, 1, 2, 3, 999)) == "2026-12-01T01:02:03Z"
    berlin = timezone(timedelta(hours=1))
    assert status.rfc3339(datetime(2026, 12, 1, 1, 0, tzinfo=berlin)) == "2026-12-01T00:00:00Z"


def test_set_condition_appends_and_keeps_transition_time_when_status_is_unchanged():
    first = status.set_condition(None, "Ready", "False", "RunSubmitted", "submitted", T0, observed_generation=2)
    assert first == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "RunSubmitted",
            "message": "submitted",
            "lastTransitionTime": "2026-12-01T00:00:00Z",
            "observedGeneration": 2,
        }
    ]
    same = status.set_condition(first, "Ready", "False", "Running", "running", T1)
    assert same[0]["lastTransitionTime"] == "2026-12-01T00:00:00Z"
    assert same[0]["reason"] == "Running" and "observedGeneration" not in same[0]
    changed = status.set_condition(same, "Ready", "True", "Completed", "done", T2)
    assert changed[0]["lastTransitionTime"] == "2026-12-01T00:09:00Z"
    assert first[0]["reason"] == "RunSubmitted", "the input list is not modified"


def test_set_condition_keeps_other_conditions_and_their_order():
    conditions = status.set_condition(None, "A", "True", "X", "", T0)
    conditions = status.set_condition(conditions, "B", "True", "X", "", T0)
    conditions = status.set_condition(conditions, "A", "False", "Y", "", T1)
    assert [(c["type"], c["status"]) for c in conditions] == [("A", "False"), ("B", "True")]


def test_set_condition_clips_long_messages():
    [condition] = status.set_condition(None, "Ready", "False", "Failed", "x" * 40000, T0)
    assert len(condition["message"]) == 32768


def test_terminal_phases_and_transitions():
    assert status.is_terminal("Completed") and status.is_terminal("Failed") and status.is_terminal("Stopped")
    assert not status.is_terminal("Running") and not status.is_terminal(None)
    assert status.may_transition(None, "Pending")
    assert status.may_transition("Pending", "Running")
    assert status.may_transition("Running", "Completed")
    assert status.may_transition("Queued", "Running") and status.may_transition("Running", "Queued")
    assert status.may_transition("Running", "Running")
    assert not status.may_transition("Running", "Pending"), "a late submit write must not undo progress"
    assert not status.may_transition("Completed", "Running")
    assert not status.may_transition("Completed", "Failed")
    assert not status.may_transition("Failed", "Failed"), "a terminal phase is written once"
    assert status.may_transition("Failed", "Running") and status.may_transition("Stopped", "Running")
    assert not status.may_transition("Failed", "Pending")


def test_task_lifecycle_patches():
    current = {}
    patch = status.submitted(current, run_id="run-1", run_url="http://dagster/runs/run-1", generation=3, now=T0)
    assert patch["phase"] == "Pending" and patch["dagsterRunId"] == "run-1" and patch["dagsterRunUrl"] == "http://dagster/runs/run-1"
    assert patch["observedGeneration"] == 3
    conds = conditions_by_type(patch)
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "RunSubmitted"
    assert conds["Succeeded"]["status"] == "Unknown" and conds["Succeeded"]["observedGeneration"] == 3
    assert "startTime" not in patch and "completionTime" not in patch
    current = apply(current, patch)

    patch = status.queued(current, message="waiting: WorkspaceConfig default allows 2 running Tasks", now=T0)
    assert patch["phase"] == "Queued" and conditions_by_type(patch)["Ready"]["reason"] == "Queued"
    current = apply(current, patch)

    patch = status.running(current, job_name="t-job-1", attempt=1, now=T1, pod_name="t-job-1-abcde")
    assert patch["phase"] == "Running" and patch["jobName"] == "t-job-1" and patch["attempt"] == 1 and patch["podName"] == "t-job-1-abcde"
    assert patch["startTime"] == "2026-12-01T00:05:00Z"
    assert conditions_by_type(patch)["Ready"]["lastTransitionTime"] == "2026-12-01T00:00:00Z"
    assert conditions_by_type(patch)["Succeeded"]["reason"] == "Running"
    current = apply(current, patch)

    patch = status.completed(current, exit_code=0, now=T2)
    assert patch["phase"] == "Completed" and patch["exitCode"] == 0 and patch["completionTime"] == "2026-12-01T00:09:00Z"
    conds = conditions_by_type(patch)
    assert conds["Ready"]["status"] == conds["Succeeded"]["status"] == "True"
    assert conds["Ready"]["lastTransitionTime"] == "2026-12-01T00:09:00Z"
    assert conds["Succeeded"]["observedGeneration"] == 3
    current = apply(current, patch)
    assert "startTime" not in patch
    parsed = TaskStatus.model_validate(current)
    assert parsed.phase.value == "Completed" and parsed.start_time == T1


def test_failed_and_stopped():
    running = apply({}, status.running(None, job_name="t-job-1", attempt=1, now=T0))
    patch = status.failed(running, reason="AgentFailed", message="agent exited with code 3", exit_code=3, now=T1)
    assert patch["phase"] == "Failed" and patch["exitCode"] == 3 and patch["message"] == "agent exited with code 3"
    assert patch["completionTime"] == "2026-12-01T00:05:00Z"
    conds = conditions_by_type(patch)
    assert (conds["Succeeded"]["status"], conds["Succeeded"]["reason"]) == ("False", "AgentFailed")
    assert conds["Ready"]["status"] == "False"
    assert "exitCode" not in status.failed(running, reason="ContextRefNotFound", message="m", now=T1)

    patch = status.stopped(running, reason="StopRequested", message="kubetask.io/stop set", now=T1)
    assert patch["phase"] == "Stopped" and conditions_by_type(patch)["Succeeded"]["status"] == "False"
    assert patch["completionTime"] == "2026-12-01T00:05:00Z"


def test_rerun_clears_the_previous_outcome_but_keeps_start_time():
    current = apply({}, status.running(None, job_name="t-job-1", attempt=1, now=T0, pod_name="t-job-1-x"))
    current = apply(current, status.failed(current, reason="AgentFailed", message="m", exit_code=1, now=T1))
    patch = status.running(current, job_name="t-job-2", attempt=2, now=T2)
    current = apply(current, patch)
    assert current["phase"] == "Running" and current["attempt"] == 2
    assert "exitCode" not in current and "completionTime" not in current and "podName" not in current
    assert current["startTime"] == "2026-12-01T00:00:00Z"


def test_retrying_stays_running_with_the_failure_reason():
    current = apply({}, status.running(None, job_name="t-job-1", attempt=1, now=T0, pod_name="p1"))
    patch = status.retrying(current, "AgentFailed", "attempt 1 failed; retrying in 10 s", exit_code=2, now=T1)
    assert patch["phase"] == "Running" and patch["exitCode"] == 2 and "completionTime" not in patch
    conds = conditions_by_type(patch)
    assert (conds["Succeeded"]["status"], conds["Succeeded"]["reason"]) == ("Unknown", "AgentFailed")
    assert conds["Succeeded"]["lastTransitionTime"] == "2026-12-01T00:00:00Z"
    assert status.may_transition(current["phase"], patch["phase"])


def test_pod_started_and_completed_record_the_pod():
    assert status.pod_started({"phase": "Running"}, pod_name="t-job-1-x") == {"podName": "t-job-1-x"}
    assert status.completed(None, exit_code=0, pod_name="t-job-1-x", now=T0)["podName"] == "t-job-1-x"


def test_builders_default_to_the_current_time_and_keep_the_generation():
    before = status.rfc3339(status.now())
    patch = status.failed({"observedGeneration": 4}, "AgentFailed", "m")
    assert before <= patch["completionTime"] <= status.rfc3339(status.now())
    assert patch["observedGeneration"] == 4
    assert conditions_by_type(patch)["Ready"]["observedGeneration"] == 4
    assert status.running({"observedGeneration": 4}, job_name="j", attempt=1, generation=5)["observedGeneration"] == 5


def test_running_keeps_the_pod_of_the_same_attempt():
    current = apply({}, status.running(None, job_name="j", attempt=1, now=T0, pod_name="j-abc"))
    assert "podName" not in status.running(current, job_name="j", attempt=1, now=T1)


def test_running_uses_the_given_start_time():
    patch = status.running(None, job_name="j", attempt=1, now=T1, started=T0)
    assert patch["startTime"] == "2026-12-01T00:00:00Z"


# --- retries and timeouts ----------------------------------------------------------------------


def policy(**backoff):
    return RetryPolicy.model_validate({"limit": 5, "backoff": backoff} if backoff else {"limit": 5})


def test_retry_delay_defaults():
    assert [status.retry_delay(None, n) for n in (1, 2, 3)] == [10.0, 20.0, 40.0]
    assert status.retry_delay(policy(), 6) == 320.0
    assert status.retry_delay(policy(), 7) == 600.0
    assert status.retry_delay(policy(), 1000) == 600.0


def test_retry_delay_custom():
    custom = policy(initialDelay="5s", factor=3, maxDelay="1m")
    assert [status.retry_delay(custom, n) for n in (1, 2, 3, 4)] == [5.0, 15.0, 45.0, 60.0]
    assert status.retry_delay(policy(initialDelay="500ms", factor=1), 9) == 0.5
    assert status.retry_delay(policy(initialDelay="1h"), 1) == 600.0


def test_effective_timeout():
    workspace = WorkspaceConfigSpec(service_account_name="sa", default_timeout="30m")
    assert status.effective_timeout_seconds(TaskSpec(contexts=[], timeout="1h30m"), workspace, "10m") == 5400
    assert status.effective_timeout_seconds(TaskSpec(contexts=[]), workspace, "10m") == 600
    assert status.effective_timeout_seconds(TaskSpec(contexts=[]), workspace) == 1800
    assert status.effective_timeout_seconds(TaskSpec(contexts=[]), WorkspaceConfigSpec(service_account_name="sa")) is None
    assert status.effective_timeout_seconds(TaskSpec(contexts=[], timeout="1500ms"), workspace) == 2


def test_effective_retries():
    batch = policy()
    own = RetryPolicy(limit=1)
    assert status.effective_retries(TaskSpec(contexts=[], retries=own), batch) is own
    assert status.effective_retries(TaskSpec(contexts=[]), batch) is batch
    assert status.effective_retries(TaskSpec(contexts=[])) is None


# --- BatchRun summary --------------------------------------------------------------------------


def test_summary_counts_uncreated_tasks_as_pending():
    tasks = [
        ("b-task-0", "Running", None),
        ("b-task-1", "Queued", None),
        ("b-task-2", "Completed", None),
        ("b-task-3", None, None),
        ("b-task-4", "Pending", None),
    ]
    summary = status.batchrun_summary(tasks, total=8, paused=False, stopped=False)
    assert summary["progress"] == {"total": 8, "pending": 5, "queued": 1, "running": 1, "completed": 1, "failed": 0, "stopped": 0}
    assert summary["phase"] == "Running" and summary["failedTasks"] == []


def test_summary_phases():
    summary = status.batchrun_summary
    assert summary([], total=3, paused=False, stopped=False)["phase"] == "Pending"
    assert summary([("a", "Pending", None)], total=1, paused=False, stopped=False)["phase"] == "Pending"
    assert summary([("a", "Completed", None)], total=2, paused=False, stopped=False)["phase"] == "Running"
    assert summary([("a", "Completed", None)], total=2, paused=True, stopped=False)["phase"] == "Paused"
    assert summary([("a", "Completed", None), ("b", "Completed", None)], total=2, paused=True, stopped=False)["phase"] == "Completed"
    assert summary([("a", "Completed", None), ("b", "Failed", "AgentFailed")], total=2, paused=False, stopped=False)["phase"] == "Failed"
    assert summary([("a", "Completed", None), ("b", "Stopped", "StopRequested")], total=2, paused=False, stopped=False)["phase"] == "Failed"
    assert summary([("a", "Running", None)], total=2, paused=True, stopped=True)["phase"] == "Stopped"
    assert summary([], total=0, paused=False, stopped=False)["phase"] == "Completed"


def test_summary_lists_at_most_50_failed_tasks():
    tasks = [(f"b-task-{i}", "Failed", "AgentFailed" if i % 2 else None) for i in range(120)]
    summary = status.batchrun_summary(tasks, total=120, paused=False, stopped=False)
    assert summary["progress"]["failed"] == 120
    assert len(summary["failedTasks"]) == 50
    assert summary["failedTasks"][:2] == [{"name": "b-task-0", "reason": "Failed"}, {"name": "b-task-1", "reason": "AgentFailed"}]
    assert summary["phase"] == "Failed"
    assert BatchRunStatus.model_validate(summary).failed_tasks[0].name == "b-task-0"
