"""The Dagster edge over a fake requests session: where the webserver is, run status, the kept log's pages."""

import pytest
import requests

from kubectl_kubetask.dagster import Dagster, base_url
from kubectl_kubetask.errors import PluginError
from kubetask.domain.kept_logs import END, KeptLogRef, header


def test_the_url_is_the_flag_else_the_environment_else_what_precedes_runs_in_the_run_url():
    run_url = "https://dagster.example/prefix/runs/abc"
    assert base_url("http://a:1/", {"KUBETASK_DAGSTER_URL": "http://b"}, run_url) == "http://a:1"
    assert base_url(None, {"KUBETASK_DAGSTER_URL": "http://b/"}, run_url) == "http://b"
    assert base_url(None, {}, run_url) == "https://dagster.example/prefix"
    assert base_url(None, {}, "http://127.0.0.1:3000/runs/abc") == "http://127.0.0.1:3000"
    assert base_url(None, {}, None) is None and base_url(None, {}, "not a url") is None


class Response:
    def __init__(self, body, status=200):
        self.body, self.status_code = body, status

    def json(self):
        return self.body


class Session:
    """Answers logsForRun in two pages and capturedLogs in chunks, as Dagster's webserver does."""

    def __init__(self, stdout, fail=None):
        self.stdout = stdout.encode()
        self.fail = fail
        self.queries = []

    def post(self, url, json, timeout):
        if self.fail:
            raise self.fail
        query, v = json["query"], json["variables"]
        self.queries.append((next(f for f in ("runOrError", "logsForRun", "capturedLogs") if f in query), v))
        if "runOrError" in query:
            return Response({"data": {"runOrError": {"__typename": "Run", "status": "SUCCESS"}}})
        if "logsForRun" in query:
            if v["cursor"] is None:
                return Response({"data": {"logsForRun": {"__typename": "EventConnection", "cursor": "c1", "hasMore": True,
                    "events": [{"__typename": "RunStartEvent"},
                               {"__typename": "LogsCapturedEvent", "fileKey": "other", "stepKeys": ["summarize"]}]}}})
            return Response({"data": {"logsForRun": {"__typename": "EventConnection", "cursor": "c2", "hasMore": False,
                "events": [{"__typename": "LogsCapturedEvent", "fileKey": "abcdef", "stepKeys": ["run_batch_task[task_1]"]}]}}})
        assert v["key"] == ["run-1", "compute_logs", "abcdef"]
        start = int(v["cursor"] or 0)
        chunk = self.stdout[start:start + 10]  # tiny pages: the block spans many calls
        return Response({"data": {"capturedLogs": {"stdout": chunk.decode() or None, "cursor": str(start + len(chunk))}}})


def test_the_kept_block_is_read_from_the_compute_log_of_the_step_page_by_page():
    stdout = f"noise\n{header('ns', 'br-task-1', 1, 'p')}\nline one\nline two\n{END}\nafter\n"
    session = Session(stdout)
    block = Dagster("http://d", session).kept_block(KeptLogRef("run-1", "run_batch_task[task_1]", 1), "ns", "br-task-1", 1)
    assert (block.text, block.pod, block.complete) == ("line one\nline two\n", "p", True)
    assert [q for q, _ in session.queries[:2]] == ["logsForRun", "logsForRun"]
    assert sum(q == "capturedLogs" for q, _ in session.queries) > 5


def test_an_unreachable_or_failing_dagster_is_a_one_line_error():
    with pytest.raises(PluginError, match=r"^cannot reach Dagster at http://127.0.0.1:1: connection refused"):
        Dagster("http://127.0.0.1:1").run_status("r")
    with pytest.raises(PluginError, match="HTTP 502"):
        Dagster("http://d", type("S", (), {"post": lambda *a, **k: Response({}, 502)})()).run_status("r")
    answer = Response({"errors": [{"message": "Cannot query field\nmore"}]})
    with pytest.raises(PluginError, match="refused the query: Cannot query field$"):
        Dagster("http://d", type("S", (), {"post": lambda *a, **k: answer})()).run_status("r")
    with pytest.raises(PluginError, match="timed out"):
        Dagster("http://d", Session("", fail=requests.ConnectTimeout("timed out"))).run_status("r")


def test_run_status_is_none_for_a_run_dagster_does_not_know():
    unknown = Response({"data": {"runOrError": {"__typename": "RunNotFoundError"}}})
    assert Dagster("http://d", type("S", (), {"post": lambda *a, **k: unknown})()).run_status("r") is None
    assert Dagster("http://d", Session("")).run_status("r") == "SUCCESS"
