"""The commands over fake edges: logs and its kept-log fallback, stop's kind detection, pause, resume, rerun,
open, describe with Dagster away, watch on a pipe and on a terminal, and the CLI's one-line errors."""

import io

import pytest

from kubectl_kubetask import cli, commands
from kubectl_kubetask.cluster import LogUnavailable
from kubectl_kubetask.errors import PluginError
from kubetask.domain.kept_logs import END, header
from tests.unit.cli.cli_fakes import FakeCluster, FakeDagster, batchrun_obj, session, task_obj

AGENT_LOG = "Dagster run run-1, step run_agent: its stdout (attempt 1)"
POD = {"metadata": {"name": "hello-job-1-abcde", "creationTimestamp": "2026-01-01T00:00:00Z"}}


def test_logs_reads_the_agent_container_of_the_last_attempts_pod():
    cluster = FakeCluster({("Task", "hello"): task_obj()}, pods={("hello", 1): [POD]},
                          logs={"hello-job-1-abcde": "=== Task Content ===\nhi\n"})
    s = session(cluster)
    assert commands.logs(s, "hello", attempt=None, follow=False) == 0
    assert s.out.getvalue() == "=== Task Content ===\nhi\n" and s.made == []  # no Dagster needed


def test_logs_follows_a_running_agent_only():
    running = {**POD, "status": {"phase": "Running", "containerStatuses": [{"name": "agent", "state": {"running": {}}}]}}
    done = {**POD, "status": {"phase": "Running", "containerStatuses": [{"name": "agent", "state": {"terminated": {}}}]}}
    follows = []
    for pod in (running, done, {**POD, "status": {"phase": "Succeeded"}}):
        cluster = FakeCluster({("Task", "hello"): task_obj()}, pods={("hello", 1): [pod]}, logs={"hello-job-1-abcde": "x\n"})
        cluster.pod_log = lambda pod, container, follow: follows.append(follow) or iter(["x\n"])
        assert commands.logs(session(cluster), "hello", attempt=None, follow=True) == 0
    assert follows == [True, False, False]


def test_logs_falls_back_to_the_copy_kept_in_dagster_when_the_pod_is_gone():
    stdout = f"{header('ns', 'hello', 1, 'hello-job-1-abcde')}\nthe whole log\n{END}\n"
    cluster = FakeCluster({("Task", "hello"): task_obj(agentLog=AGENT_LOG)})
    s = session(cluster, FakeDagster(None, stdout))
    assert commands.logs(s, "hello", attempt=None, follow=True) == 0
    assert s.out.getvalue() == "the whole log\n"
    assert "kept in Dagster run run-1, step run_agent" in s.err.getvalue()
    assert s.made[0].url == "http://127.0.0.1:3999"  # derived from status.dagsterRunUrl
    assert s.made[0].asked == [("run-1", "run_agent", "ns", "hello", 1)]


def test_a_batchrun_tasks_kept_log_is_read_from_the_dagster_of_its_batchrun():
    stdout = f"{header('ns', 'br-task-3', 1, 'p3')}\nthree\n{END}\n"
    t = task_obj("br-task-3", agentLog="Dagster run r, step run_batch_task[task_3]: its stdout (attempt 1)",
                 dagsterRunId=None, dagsterRunUrl=None)
    t["metadata"]["labels"] = {"kubetask.io/batch-run": "br"}
    cluster = FakeCluster({("Task", "br-task-3"): t, ("BatchRun", "br"): batchrun_obj(dagsterRunUrl="http://d:9/runs/r")})
    s = session(cluster, FakeDagster(None, stdout))
    assert commands.logs(s, "br-task-3", attempt=None, follow=False) == 0
    assert s.out.getvalue() == "three\n" and s.made[0].url == "http://d:9"
    assert s.made[0].asked == [("r", "run_batch_task[task_3]", "ns", "br-task-3", 1)]


def test_logs_falls_back_too_when_the_pod_has_no_log_to_give():
    stdout = f"{header('ns', 'hello', 1, 'p')}\nkept\n{END}\n"
    cluster = FakeCluster({("Task", "hello"): task_obj(agentLog=AGENT_LOG)}, pods={("hello", 1): [POD]},
                          logs={"hello-job-1-abcde": LogUnavailable("400 Bad Request")})
    s = session(cluster, FakeDagster(None, stdout), dagster_url="http://flag:1")
    assert commands.logs(s, "hello", attempt=1, follow=False) == 0
    assert s.out.getvalue() == "kept\n" and s.made[0].url == "http://flag:1"


def test_no_log_anywhere_is_one_clear_error():
    cluster = FakeCluster({("Task", "hello"): task_obj()})  # no pod, no status.agentLog
    with pytest.raises(PluginError) as e:
        commands.logs(session(cluster), "hello", attempt=None, follow=False)
    assert str(e.value) == ("no log of Task 'hello' attempt 1 in namespace 'ns': no pod of attempt 1 is left, "
                            "and status.agentLog names no kept copy")
    cluster = FakeCluster({("Task", "hello"): task_obj(agentLog=AGENT_LOG)})
    with pytest.raises(PluginError, match="holds no copy of it"):
        commands.logs(session(cluster, FakeDagster(None, "nothing kept\n")), "hello", attempt=None, follow=False)
    with pytest.raises(PluginError, match="^cannot reach Dagster at http://127.0.0.1:3999: connection refused"):
        commands.logs(session(cluster, FakeDagster(None, reachable=False)), "hello", attempt=None, follow=False)
    with pytest.raises(PluginError, match="has no attempt 3 \\(its last is 1\\)"):
        commands.logs(session(cluster), "hello", attempt=3, follow=False)
    fresh = FakeCluster({("Task", "new"): task_obj("new", phase="Pending", attempt=None)})
    with pytest.raises(PluginError, match="has not started an attempt yet \\(phase Pending\\)"):
        commands.logs(session(fresh), "new", attempt=None, follow=False)


def test_stop_tries_a_task_then_a_batchrun_and_says_which_it_stopped():
    cluster = FakeCluster({("BatchRun", "br"): batchrun_obj(), ("Task", "t"): task_obj("t", phase="Running")})
    s = session(cluster)
    assert commands.stop(s, "br", None) == 0
    assert cluster.reads == [("Task", "br"), ("BatchRun", "br")]
    assert cluster.annotations == [("BatchRun", "br", {"kubetask.io/stop": "true"})]
    assert s.out.getvalue().startswith("BatchRun ns/br: stop requested")
    commands.stop(s, "t", None)
    assert cluster.annotations[-1] == ("Task", "t", {"kubetask.io/stop": "true"})
    with pytest.raises(PluginError, match="^BatchRun 't' not found in namespace 'ns'$"):
        commands.stop(s, "t", commands.BATCHRUN)


def test_stop_leaves_what_already_ended_alone():
    cluster = FakeCluster({("Task", "t"): task_obj("t", phase="Completed")})
    s = session(cluster)
    assert commands.stop(s, "t", None) == 0 and cluster.annotations == []
    assert "has already ended (Completed)" in s.out.getvalue()


def test_pause_resume_and_rerun_write_the_annotations_the_bridge_reads():
    cluster = FakeCluster({("BatchRun", "br"): batchrun_obj()})
    s = session(cluster)
    commands.pause(s, "br")
    cluster.objects[("BatchRun", "br")] = batchrun_obj(annotations={"kubetask.io/pause": "True"})
    commands.resume(s, "br")
    cluster.objects[("BatchRun", "br")] = batchrun_obj(phase="Failed")
    commands.rerun(s, "br")
    assert cluster.annotations == [("BatchRun", "br", {"kubetask.io/pause": "true"}),
                                   ("BatchRun", "br", {"kubetask.io/pause": None}),
                                   ("BatchRun", "br", {"kubetask.io/rerun": "failed"})]
    commands.resume(s, "br")  # not paused: nothing written
    assert len(cluster.annotations) == 3 and "is not paused" in s.out.getvalue()


def test_open_prints_the_run_url_and_opens_a_browser_unless_told_not_to():
    cluster = FakeCluster({("BatchRun", "br"): batchrun_obj(dagsterRunUrl="http://d/runs/r")})
    opened = []
    s = session(cluster, open_browser=lambda url: opened.append(url) or True)
    commands.open_run(s, "br", None, print_only=True)
    assert s.out.getvalue() == "http://d/runs/r\n" and opened == []
    commands.open_run(s, "br", None, print_only=False)
    assert opened == ["http://d/runs/r"]
    with pytest.raises(PluginError, match="has no Dagster run yet"):
        commands.open_run(session(FakeCluster({("Task", "t"): task_obj("t", dagsterRunUrl=None)})), "t", None, print_only=True)


def test_describe_says_unreachable_when_dagster_does_not_answer():
    cluster = FakeCluster({("Task", "hello"): task_obj()}, pods={("hello", 1): [POD]},
                          jobs={"hello-job-1": {"spec": {}, "status": {"succeeded": 1}}})
    s = session(cluster, FakeDagster(None, reachable=False))
    assert commands.describe(s, "hello") == 0
    text = s.out.getvalue()
    assert "Job hello-job-1\n" in text and "Pod hello-job-1-abcde\n" in text
    assert "  status:     unreachable (Dagster at http://127.0.0.1:3999)" in text
    s = session(cluster, FakeDagster(None, status="SUCCESS"))
    commands.describe(s, "hello")
    assert "  status:     SUCCESS" in s.out.getvalue()


def _run(progress, phase="Running", **status):
    return batchrun_obj(phase=phase, progress={"total": 4, **progress}, **status)


DONE = [{"type": "Succeeded", "status": "True", "reason": "AllTasksCompleted", "message": "4 Tasks completed"},
        {"type": "Ready", "status": "True", "reason": "AllTasksCompleted", "message": "4 Tasks completed"}]
STEPS = [_run({"pending": 4}, "Pending"), _run({"running": 2, "queued": 2}), _run({"running": 2, "queued": 2}),
         _run({"completed": 2, "running": 2}), _run({"completed": 4}, "Completed"),
         _run({"completed": 4}, "Completed", conditions=DONE)]


def test_watch_on_a_pipe_prints_a_line_per_change_and_ends_with_the_outcome():
    s = session(FakeCluster({("BatchRun", "br"): list(STEPS)}))
    assert commands.watch(s, "br") == 0
    lines = s.out.getvalue().splitlines()
    assert [line.split()[0] for line in lines[:4]] == ["Pending", "Running", "Running", "Completed"]
    assert len(lines[:4]) == len(set(lines[:4]))  # the unchanged read printed nothing
    assert lines[4] == "BatchRun ns/br Completed: AllTasksCompleted: 4 Tasks completed"
    assert "\r" not in s.out.getvalue()


def test_watch_on_a_terminal_redraws_one_line_and_fails_unless_completed():
    failed = [{"type": "Succeeded", "status": "False", "reason": "TasksFailed", "message": "1 of 4 Tasks failed"},
              {"type": "Ready", "status": "False", "reason": "TasksFailed", "message": "1 of 4 Tasks failed"}]
    steps = [_run({"running": 4}), _run({"completed": 3, "failed": 1}, "Failed", conditions=failed)]
    s = session(FakeCluster({("BatchRun", "br"): steps}), tty=True)
    assert commands.watch(s, "br") == 1
    text = s.out.getvalue()
    assert text.startswith("\rRunning ") and text.count("\r") == 2
    assert text.splitlines()[-2:] == ["BatchRun ns/br Failed: TasksFailed: 1 of 4 Tasks failed",
                                      "  Tasks: 4 (3 completed, 1 failed, 0 stopped)"]


def test_watch_gives_up_waiting_for_the_outcome_conditions_after_a_while():
    clock = iter(range(0, 1000, 10))
    s = session(FakeCluster({("BatchRun", "br"): [_run({"completed": 4}, "Completed")]}), clock=lambda: next(clock))
    assert commands.watch(s, "br") == 0
    assert s.out.getvalue().splitlines()[-2] == "BatchRun ns/br Completed"


def test_the_cli_reports_errors_in_one_line_with_exit_code_1(tmp_path, monkeypatch):
    err = io.StringIO()
    assert cli.run(["describe", "x", "--kubeconfig", str(tmp_path / "missing")], io.StringIO(), err) == 1
    assert err.getvalue() == f"error: the kubeconfig {tmp_path / 'missing'} does not exist\n"
    closed = tmp_path / "closed"
    closed.write_text("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
                      "users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u, namespace: n1}}]\n"
                      "current-context: x\n")
    err = io.StringIO()
    assert cli.run(["stop", "x", "--kubeconfig", str(closed)], io.StringIO(), err) == 1
    assert err.getvalue() == "error: cannot reach the Kubernetes API server at https://127.0.0.1:1: connection refused\n"


def test_global_flags_go_before_or_after_the_command():
    a = cli.parser().parse_args(["-n", "a", "logs", "t", "-f", "--attempt", "2"])
    assert (a.namespace, a.task, a.follow, a.attempt, a.kubeconfig) == ("a", "t", True, 2, None)
    a = cli.parser().parse_args(["stop", "t", "--namespace", "b", "--kind", "kbr", "--context", "c"])
    assert (a.namespace, a.kind, a.context) == ("b", commands.BATCHRUN, "c")
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["rerun", "br"])  # --failed is required: the only rerun there is
