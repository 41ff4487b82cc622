"""Pure formatting of the plugin: the progress bar and line of watch, a BatchRun's outcome, describe."""

from kubectl_kubetask.render import RunView, container_state, describe_task, outcome_lines, progress_bar, progress_line

P = {"total": 20, "pending": 2, "queued": 3, "running": 5, "completed": 7, "failed": 2, "stopped": 1}


def test_the_bar_shows_each_count_in_proportion_and_keeps_its_width():
    assert progress_bar(P, width=20) == "[=======xx->>>>>.....]"
    assert progress_bar({"total": 20, "completed": 20}, width=10) == "[==========]"
    assert progress_bar({"total": 3, "completed": 1, "running": 1}, width=10) == "[====>>>...]"
    assert progress_bar({"total": 5000, "completed": 4999, "failed": 1}, width=10) == "[=========x]"
    assert progress_bar({"total": 5000, "completed": 1}, width=10) == "[=.........]"
    for p in (P, {"total": 7, "completed": 3, "failed": 1, "running": 2}, {"total": 1000, "completed": 1}):
        assert len(progress_bar(p, width=25)) == 27


def test_an_empty_or_missing_progress_is_an_empty_bar():
    assert progress_bar(None, width=5) == "[.....]"
    assert progress_bar({"total": 0}, width=5) == "[.....]"
    assert progress_bar({"total": "x", "running": None}, width=5) == "[.....]"


def test_counts_beyond_total_never_overflow_the_bar():
    assert progress_bar({"total": 2, "completed": 3, "running": 1}, width=8) == "[======>>]"


def test_the_progress_line_names_the_phase_finished_over_total_and_every_count():
    line = progress_line("Running", P, width=10)
    assert line.startswith("Running   [====x->>..] 10/20  ")
    assert line.endswith("pending 2  queued 3  running 5  completed 7  failed 2  stopped 1")
    assert progress_line(None, None).startswith("Pending ")


def test_the_outcome_names_phase_ready_reason_and_message_and_the_totals():
    br = {"metadata": {"name": "b", "namespace": "ns"}, "status": {
        "phase": "Failed", "progress": P,
        "conditions": [{"type": "Ready", "status": "False", "reason": "TasksFailed", "message": "2 of 20 Tasks failed"}],
        "usage": {"inputTokens": 1200, "outputTokens": 300, "costUSD": 0.125, "tasks": 3}, "pullRequests": 2,
        "failedTasks": [{"name": "b-task-1", "reason": "AgentFailed"}], "dagsterRunUrl": "http://d/runs/r"}}
    assert outcome_lines(br) == [
        "BatchRun ns/b Failed: TasksFailed: 2 of 20 Tasks failed",
        "  Tasks: 20 (7 completed, 2 failed, 1 stopped)",
        "  usage: 1200 input + 300 output tokens, $0.125, reported by 3 Tasks",
        "  pull requests: 2",
        "  failed Tasks: b-task-1 (AgentFailed)",
        "  Dagster run: http://d/runs/r",
    ]
    nothing_reported = {"metadata": {"name": "b", "namespace": "ns"}, "status": {
        "phase": "Completed", "usage": {"inputTokens": 0, "outputTokens": 0, "costUSD": 0, "tasks": 0}, "pullRequests": 0}}
    assert outcome_lines(nothing_reported) == ["BatchRun ns/b Completed", "  pull requests: 0"]
    assert outcome_lines({"metadata": {"name": "b", "namespace": "ns"}, "status": {"phase": "Completed"}}) == [
        "BatchRun ns/b Completed"]


TASK = {"metadata": {"name": "hello", "namespace": "ns"}, "status": {
    "phase": "Completed", "attempt": 2, "jobName": "hello-job-2", "exitCode": 0,
    "conditions": [{"type": "Ready", "status": "True", "reason": "Completed", "message": "attempt 2 completed"},
                   {"type": "Succeeded", "status": "True", "reason": "Completed", "message": "attempt 2 completed"}],
    "result": {"pullRequests": [{"url": "https://git.example/pr/7"}], "summary": "bumped deps"},
    "usage": {"inputTokens": 10, "outputTokens": 5, "costUSD": 0.01, "throughAttempt": 2},
    "agentLog": "Dagster run r1, step run_agent: its stdout (attempt 2)",
    "dagsterRunId": "r1", "dagsterRunUrl": "http://127.0.0.1:3000/runs/r1"}}
JOB = {"spec": {"suspend": False}, "status": {"succeeded": 1, "conditions": [
    {"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}}
POD = {"metadata": {"name": "hello-job-2-abcde"}, "spec": {"nodeName": "kwok-node"}, "status": {
    "phase": "Succeeded",
    "initContainerStatuses": [{"name": "copy-tools", "state": {"terminated": {"exitCode": 0}}}],
    "containerStatuses": [{"name": "agent", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}}


def test_describe_shows_the_chain_task_job_pod_run():
    text = describe_task(TASK, JOB, [POD], RunView("r1", "http://127.0.0.1:3000/runs/r1", "SUCCESS"))
    assert text.splitlines() == [
        "Task ns/hello",
        "  phase:      Completed (attempt 2)",
        "  Ready:      True  Completed: attempt 2 completed",
        "  Succeeded:  True  Completed: attempt 2 completed",
        "  exit code:  0",
        "  PR:         https://git.example/pr/7",
        "  cost:       10 input + 5 output tokens, $0.01",
        "  summary:    bumped deps",
        "  kept log:   Dagster run r1, step run_agent: its stdout (attempt 2)",
        "Job hello-job-2",
        "  pods:       active 0, succeeded 1, failed 0",
        "  suspended:  no",
        "  SuccessCriteriaMet: True",
        "Pod hello-job-2-abcde",
        "  phase:      Succeeded on node kwok-node",
        "  agent:      terminated: exit code 0 (Completed)",
        "Dagster run r1",
        "  url:        http://127.0.0.1:3000/runs/r1",
        "  status:     SUCCESS",
    ]


def test_describe_says_what_is_missing_and_that_dagster_is_unreachable():
    task = {"metadata": {"name": "t", "namespace": "ns"}, "status": {"phase": "Failed", "attempt": 1, "jobName": "t-job-1",
                                                                    "dagsterRunId": "r"}}
    text = describe_task(task, None, [], RunView("r", None, note="unreachable (Dagster at http://127.0.0.1:1)"))
    assert "Job t-job-1: not found (deleted, or not created yet)" in text
    assert "Pod: none (gone, or not created yet)" in text
    assert "  status:     unreachable (Dagster at http://127.0.0.1:1)" in text
    fresh = describe_task({"metadata": {"name": "t", "namespace": "ns"}}, None, [], RunView(None, None))
    assert fresh.splitlines() == ["Task ns/t", "  phase:      Pending", "Job: none yet", "Pod: none (gone, or not created yet)",
                                  "Dagster run: none yet"]


def test_container_states_read_as_kubectl_would_say_them():
    assert container_state({"state": {"running": {"startedAt": "T"}}}) == "running since T"
    assert container_state({"state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image\nmore"}}}) == (
        "waiting: ImagePullBackOff (no such image)")
    assert container_state({"state": {"terminated": {"exitCode": 3, "reason": "Error", "message": "boom"}}}) == (
        "terminated: exit code 3 (Error): boom")
    assert container_state({}) == "not started"
    pod = {**POD, "status": {"phase": "Pending", "initContainerStatuses": [
        {"name": "git-clone", "state": {"terminated": {"exitCode": 128, "reason": "Error"}}}]}}
    text = describe_task(TASK, JOB, [pod], RunView("r1", None, "STARTED"))
    assert "  init git-clone: terminated: exit code 128 (Error)" in text and "  agent:      no status yet" in text
