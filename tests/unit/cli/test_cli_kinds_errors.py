"""Which kind a name on the command line is, and the one-line messages of the plugin's errors."""

import pytest
import requests
import urllib3

from kubectl_kubetask.errors import PluginError, connection_problem, dagster_unreachable, no_log, not_found
from kubectl_kubetask.kinds import BATCHRUN, TASK, detect, parse_kind, parse_target


def test_kinds_are_spelled_as_kubectl_spells_them():
    assert parse_kind("Task") is TASK and parse_kind("ktask") is TASK and parse_kind("tasks.kubetask.io") is TASK
    assert parse_kind("batchrun") is BATCHRUN and parse_kind("KBR") is BATCHRUN
    with pytest.raises(PluginError, match="unknown kind 'job'"):
        parse_kind("job")


def test_a_bare_name_tries_a_task_then_a_batchrun_and_a_kind_narrows_it():
    assert parse_target("x", None, (TASK, BATCHRUN)) == ((TASK, BATCHRUN), "x")
    assert parse_target("x", BATCHRUN, (TASK, BATCHRUN)) == ((BATCHRUN,), "x")
    assert parse_target("batchrun/x", None, (TASK, BATCHRUN)) == ((BATCHRUN,), "x")
    with pytest.raises(PluginError, match="names a Task, but --kind says BatchRun"):
        parse_target("task/x", BATCHRUN, (TASK, BATCHRUN))
    with pytest.raises(PluginError, match="acts on BatchRun, not on a Task"):
        parse_target("task/x", None, (BATCHRUN,))


def test_detection_takes_the_first_kind_that_has_the_object_and_says_which_were_tried():
    objects = {("BatchRun", "x"): {"kind": "BatchRun"}}
    tried = []

    def get(kind, name):
        tried.append(kind.name)
        return objects.get((kind.name, name))

    assert detect((TASK, BATCHRUN), "x", "ns", get) == (BATCHRUN, {"kind": "BatchRun"})
    assert tried == ["Task", "BatchRun"]
    with pytest.raises(PluginError) as e:
        detect((TASK, BATCHRUN), "y", "ns", get)
    assert str(e.value) == "Task or BatchRun 'y' not found in namespace 'ns'"


def test_messages_are_one_line_and_name_what_is_missing():
    assert str(not_found(["Task"], "x", "y")) == "Task 'x' not found in namespace 'y'"
    assert str(no_log("t", "ns", 2, "no pod")) == "no log of Task 't' attempt 2 in namespace 'ns': no pod"
    message = str(dagster_unreachable("http://127.0.0.1:3000", "connection refused"))
    assert message.startswith("cannot reach Dagster at http://127.0.0.1:3000: connection refused") and "\n" not in message


def test_connection_problems_are_short_reasons_without_object_addresses():
    refused = urllib3.exceptions.MaxRetryError(None, "/apis", urllib3.exceptions.NewConnectionError(
        object(), "Failed to establish a new connection: [Errno 111] Connection refused"))
    assert connection_problem(refused) == "connection refused"
    try:
        requests.get("http://127.0.0.1:1/", timeout=2)
    except requests.RequestException as e:
        assert connection_problem(e) == "connection refused"
    timeout = urllib3.exceptions.MaxRetryError(None, "/", urllib3.exceptions.ConnectTimeoutError("timed out"))
    assert connection_problem(timeout) == "timed out"
    assert connection_problem(RuntimeError("odd\nsecond line")) == "odd"
