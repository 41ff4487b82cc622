"""The Dagster GraphQL adapter against a scripted HTTP session (no network)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from crd_bridge.dagster.client import (
    DagsterClient,
    DagsterError,
    DagsterRejected,
    DagsterUnavailable,
    RunNotFound,
)
from crd_bridge.dagster.queries import ALL_QUERIES, RELOAD, SLOW


class Response:
    def __init__(self, status: int, payload: Any):
        self.status_code = status
        self._payload = payload
        self.text = str(payload)

    def json(self) -> Any:
        if isinstance(self._payload, Exception):
            raise self._payload
        return self._payload


class Session:
    """Answers POSTs from a script: each item is a Response, an exception, or a callable(body)."""

    def __init__(self, *script: Any):
        self.script = list(script)
        self.calls: list[dict[str, Any]] = []

    def post(self, url: str, json: dict[str, Any], timeout: float) -> Response:
        self.calls.append({"url": url, **json})
        item = self.script.pop(0)
        if callable(item) and not isinstance(item, Response):
            item = item(json)
        if isinstance(item, Exception):
            raise item
        return item


def ok(data: dict[str, Any]) -> Response:
    return Response(200, {"data": data})


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def client(session: Session, clock: Callable[[], float] | None = None, **kw: Any) -> tuple[DagsterClient, list[float]]:
    sleeps: list[float] = []
    c = DagsterClient(
        "http://dagster.test:3000/",
        location="kubetask",
        repository="__repository__",
        session=session,  # type: ignore[arg-type]
        sleep=sleeps.append,
        clock=clock or Clock(),
        **kw,
    )
    return c, sleeps


def run(run_id: str, status: str = "STARTED", **extra: Any) -> dict[str, Any]:
    return {
        "runId": run_id,
        "status": status,
        "creationTime": 1.0,
        "startTime": 2.0,
        "endTime": extra.get("endTime"),
        "tags": [{"key": k, "value": v} for k, v in extra.get("tags", {}).items()],
    }


# --- transport ---------------------------------------------------------------------------------


def test_submit_names_location_repository_job_tags_and_config():
    s = Session(ok({"launchRun": {"__typename": "LaunchRunSuccess", "run": {"runId": "r-1"}}}))
    c, _ = client(s)
    run_id = c.submit_run(
        "task_job",
        {"ops": {"prepare_task": {"config": {"name": "a"}}}},
        {"kubetask.io/uid": "u", "kubetask.io/generation": "1"},
    )
    assert run_id == "r-1"
    call = s.calls[0]
    assert call["url"] == "http://dagster.test:3000/graphql"
    params = call["variables"]["executionParams"]
    assert params["selector"] == {
        "repositoryLocationName": "kubetask",
        "repositoryName": "__repository__",
        "jobName": "task_job",
    }
    assert params["runConfigData"] == {"ops": {"prepare_task": {"config": {"name": "a"}}}}
    assert params["executionMetadata"]["tags"] == [
        {"key": "kubetask.io/uid", "value": "u"},
        {"key": "kubetask.io/generation", "value": "1"},
    ]


def test_unreachable_is_retried_with_backoff_then_reported_and_remembered():
    clock = Clock()
    refused = requests.ConnectionError("refused")
    s = Session(refused, refused, refused)
    c, sleeps = client(s, clock, attempts=3, retry_initial=0.5, down_initial=1.0, down_cap=8.0)
    with pytest.raises(DagsterUnavailable):
        c.get_run("r")
    assert sleeps == [0.5, 1.0]
    assert len(s.calls) == 3
    assert not c.available
    with pytest.raises(DagsterUnavailable, match="next attempt"):  # inside the down window: no request
        c.get_run("r")
    assert len(s.calls) == 3
    clock.t += 1.5
    s.script += [refused, refused, refused]
    with pytest.raises(DagsterUnavailable):
        c.get_run("r")
    clock.t += 1.5  # the window doubled to 2 s
    with pytest.raises(DagsterUnavailable, match="next attempt"):
        c.get_run("r")
    clock.t += 1.0
    s.script.append(ok({"runOrError": {"__typename": "Run", **run("r")}}))
    assert c.get_run("r").status == "STARTED"
    assert c.available


def test_down_window_is_capped():
    clock = Clock()
    c, _ = client(Session(*[requests.ConnectionError()] * 50), clock, attempts=1, down_initial=1.0, down_cap=4.0)
    for _ in range(6):
        with pytest.raises(DagsterUnavailable):
            c.get_run("r")
        clock.t += 100
    with pytest.raises(DagsterUnavailable):
        c.get_run("r")
    clock.t += 4.01
    assert c.available


def test_availability_hook_reports_changes():
    seen: list[bool] = []
    clock = Clock()
    s = Session(requests.ConnectionError(), ok({"runOrError": {"__typename": "Run", **run("r")}}))
    c, _ = client(s, clock, attempts=1, on_availability=seen.append)
    with pytest.raises(DagsterUnavailable):
        c.get_run("r")
    clock.t += 10
    c.get_run("r")
    assert seen == [False, True]


def test_availability_hook_reports_the_first_answer():
    seen: list[bool] = []
    s = Session(*[ok({"runOrError": {"__typename": "Run", **run("r")}})] * 2)
    c, _ = client(s, on_availability=seen.append)
    c.get_run("r")
    c.get_run("r")
    assert seen == [True]


def test_a_mutation_that_may_have_reached_the_server_is_not_resent():
    s = Session(requests.ReadTimeout("slow"))
    c, sleeps = client(s, attempts=3)
    with pytest.raises(DagsterUnavailable):
        c.submit_run("task_job", {}, {})
    assert len(s.calls) == 1 and sleeps == []


def test_queries_are_retried_on_5xx():
    s = Session(Response(502, "bad gateway"), ok({"runOrError": {"__typename": "Run", **run("r")}}))
    c, _ = client(s)
    assert c.get_run("r").run_id == "r"


def test_graphql_errors_are_dagster_errors_not_unavailability():
    s = Session(Response(400, {"errors": [{"message": "Cannot query field 'x'"}]}))
    c, _ = client(s)
    with pytest.raises(DagsterError, match="Cannot query field") as e:
        c.get_run("r")
    assert not isinstance(e.value, DagsterUnavailable)
    assert c.available


# --- submission outcomes -----------------------------------------------------------------------


def test_invalid_run_config_is_rejected():
    s = Session(ok({"launchRun": {"__typename": "RunConfigValidationInvalid", "errors": [{"message": "Missing uid"}]}}))
    c, _ = client(s)
    with pytest.raises(DagsterRejected) as e:
        c.submit_run("task_job", {}, {})
    assert e.value.kind == "RunConfigValidationInvalid" and "Missing uid" in e.value.message


def test_unknown_job_in_a_loaded_location_is_rejected():
    s = Session(
        ok(
            {
                "launchRun": {
                    "__typename": "PipelineNotFoundError",
                    "message": "Could not find Pipeline kubetask.__repository__.task_job",
                }
            }
        ),
        ok(
            {
                "workspaceOrError": {
                    "__typename": "Workspace",
                    "locationEntries": [
                        {
                            "name": "kubetask",
                            "loadStatus": "LOADED",
                            "locationOrLoadError": {"__typename": "RepositoryLocation"},
                        }
                    ],
                }
            }
        ),
    )
    c, _ = client(s)
    with pytest.raises(DagsterRejected, match="Could not find"):
        c.submit_run("task_job", {}, {})


@pytest.mark.parametrize(
    "entries",
    [
        [{"name": "kubetask", "loadStatus": "LOADING", "locationOrLoadError": None}],
        [
            {
                "name": "kubetask",
                "loadStatus": "LOADED",
                "locationOrLoadError": {"__typename": "PythonError", "message": "ImportError"},
            }
        ],
        [],
    ],
)
def test_unknown_job_while_the_location_is_not_loaded_is_transient(entries):
    s = Session(
        ok({"launchRun": {"__typename": "PipelineNotFoundError", "message": "Could not find"}}),
        ok({"workspaceOrError": {"__typename": "Workspace", "locationEntries": entries}}),
    )
    c, _ = client(s)
    with pytest.raises(DagsterUnavailable):
        c.submit_run("task_job", {}, {})


def test_python_error_on_submit_is_transient():
    s = Session(ok({"launchRun": {"__typename": "PythonError", "message": "database is locked"}}))
    c, _ = client(s)
    with pytest.raises(DagsterUnavailable, match="database is locked"):
        c.submit_run("task_job", {}, {})


# --- runs ------------------------------------------------------------------------------------------


def test_find_runs_by_tags_and_statuses():
    s = Session(
        ok(
            {
                "runsOrError": {
                    "__typename": "Runs",
                    "results": [run("r2", "QUEUED", tags={"kubetask.io/uid": "u"}), run("r1", "FAILURE", endTime=5.0)],
                }
            }
        )
    )
    c, _ = client(s)
    runs = c.find_runs({"kubetask.io/uid": "u"}, statuses=["QUEUED", "STARTED"], limit=10)
    assert [r.run_id for r in runs] == ["r2", "r1"]
    assert runs[0].tags == {"kubetask.io/uid": "u"} and not runs[0].finished
    assert runs[1].finished and runs[1].end_time == 5.0
    flt = s.calls[0]["variables"]["filter"]
    assert flt == {"tags": [{"key": "kubetask.io/uid", "value": "u"}], "statuses": ["QUEUED", "STARTED"]}
    assert s.calls[0]["variables"]["limit"] == 10


def test_get_run_not_found():
    s = Session(ok({"runOrError": {"__typename": "RunNotFoundError", "message": "Run r not found"}}))
    c, _ = client(s)
    with pytest.raises(RunNotFound):
        c.get_run("r")


def test_get_runs_in_chunks():
    def answer(body: dict[str, Any]) -> Response:
        ids = body["variables"]["filter"]["runIds"]
        return ok({"runsOrError": {"__typename": "Runs", "results": [run(i) for i in ids if i != "missing"]}})

    s = Session(answer, answer)
    c, _ = client(s)
    found = c.get_runs(["a", "b", "missing"], chunk=2)
    assert set(found) == {"a", "b"}
    assert len(s.calls) == 2


def test_failure_message_prefers_the_step_failure_and_pages():
    page1 = {
        "__typename": "EventConnection",
        "cursor": "c1",
        "hasMore": True,
        "events": [
            {
                "__typename": "ExecutionStepFailureEvent",
                "stepKey": "prepare_task",
                "message": "Execution of step failed.",
                "error": {"message": 'TaskError: WorkspaceConfig "x" not found\n', "className": "Failure"},
            },
        ],
    }
    page2 = {
        "__typename": "EventConnection",
        "cursor": "c2",
        "hasMore": False,
        "events": [
            {"__typename": "RunFailureEvent", "message": 'Execution of run for "task_job" failed.', "error": None},
        ],
    }
    s = Session(ok({"logsForRun": page1}), ok({"logsForRun": page2}))
    c, _ = client(s)
    assert c.failure_message("r") == 'step prepare_task failed: TaskError: WorkspaceConfig "x" not found'
    assert s.calls[1]["variables"]["cursor"] == "c1"


def test_failure_message_drops_dagsters_failure_class_path():
    events = {
        "__typename": "EventConnection",
        "cursor": "c",
        "hasMore": False,
        "events": [
            {
                "__typename": "ExecutionStepFailureEvent",
                "stepKey": "run_agent",
                "message": "x",
                "error": {
                    "message": "dagster._core.definitions.events.Failure: "
                    "AgentFailed: the agent exited with 1 (Error)\n",
                    "className": "Failure",
                },
            },
        ],
    }
    c, _ = client(Session(ok({"logsForRun": events})))
    assert c.failure_message("r") == "step run_agent failed: AgentFailed: the agent exited with 1 (Error)"


def test_failure_message_of_a_dead_run_worker():
    events = {
        "__typename": "EventConnection",
        "cursor": "c",
        "hasMore": False,
        "events": [
            {
                "__typename": "EngineEvent",
                "message": "Run worker failed.",
                "error": {"message": "SIGKILL", "className": None},
            },
            {"__typename": "RunFailureEvent", "message": "Run failed.", "error": None},
        ],
    }
    c, _ = client(Session(ok({"logsForRun": events})))
    assert c.failure_message("r") == "Run worker failed. SIGKILL"


def test_terminate_outcomes():
    s = Session(
        ok({"terminateRun": {"__typename": "TerminateRunSuccess", "run": {"runId": "r"}}}),
        ok(
            {
                "terminateRun": {
                    "__typename": "TerminateRunFailure",
                    "message": "already finished",
                    "run": {"status": "SUCCESS"},
                }
            }
        ),
        ok({"terminateRun": {"__typename": "RunNotFoundError", "message": "no"}}),
    )
    c, _ = client(s)
    assert [c.terminate_run("r") for _ in range(3)] == ["terminated", "not-terminable", "not-found"]


# --- re-execution ------------------------------------------------------------------------------


def test_reexecute_sends_parent_strategy_and_parent_tags():
    session = Session(ok({"launchRunReexecution": {"__typename": "LaunchRunSuccess", "run": {"runId": "r2"}}}))
    c, _ = client(session)
    assert c.reexecute_run("r1") == "r2"
    assert session.calls[0]["variables"] == {
        "params": {"parentRunId": "r1", "strategy": "FROM_FAILURE", "useParentRunTags": True}
    }


def test_reexecute_of_a_run_with_nothing_to_rerun_is_rejected_not_unavailable():
    """dagster-webserver answers 500 with the PythonError in `data`."""
    answer = {
        "data": {
            "launchRunReexecution": {
                "__typename": "PythonError",
                "className": "DagsterInvariantViolationError",
                "message": "Cannot reexecute from failure a run that is not failed or canceled\n",
            }
        }
    }
    c, _ = client(Session(Response(500, answer)))
    with pytest.raises(DagsterRejected) as e:
        c.reexecute_run("r1")
    assert e.value.kind == "DagsterInvariantViolationError"
    assert not c.failing


def test_reexecute_other_python_errors_and_bare_500s_are_transient():
    error = {"launchRunReexecution": {"__typename": "PythonError", "className": "OSError", "message": "x"}}
    c, _ = client(Session(Response(500, {"data": error})))
    with pytest.raises(DagsterUnavailable):
        c.reexecute_run("r1")
    c, _ = client(Session(Response(500, "Internal Server Error")))
    with pytest.raises(DagsterUnavailable):
        c.reexecute_run("r1")
    assert c.failing


# --- the queries match the installed Dagster's schema ------------------------------------------


def test_queries_validate_against_dagsters_graphql_schema():
    schema_mod = pytest.importorskip("dagster_graphql.schema")
    from graphql import parse, validate

    schema = schema_mod.create_schema().graphql_schema
    for name, query in ALL_QUERIES.items():
        assert validate(schema, parse(query)) == [], name


def test_every_document_of_the_bridge_is_in_the_validated_set():
    """No GraphQL outside ALL_QUERIES: every module-level document of crd_bridge is listed there."""
    import importlib
    import pkgutil

    import crd_bridge

    listed = set(ALL_QUERIES.values())
    for info in pkgutil.walk_packages(crd_bridge.__path__, "crd_bridge."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, str) and value.lstrip().startswith(("query Bridge", "mutation Bridge")):
                assert value in listed, f"{info.name}.{name}"


def test_the_batch_syncs_documents_get_the_long_timeout():
    timeouts: list[float] = []

    class Recording:
        def post(self, url: str, json: dict[str, Any], timeout: float) -> Response:
            timeouts.append(timeout)
            return Response(200, {"data": {}})

    c = DagsterClient("http://dagster", timeout=10.0, session=Recording())  # type: ignore[arg-type]
    c.execute(RELOAD, {"location": "kubetask"}, mutation=True)
    c.execute(ALL_QUERIES["runs"], {})
    assert timeouts == [60.0, 10.0] and RELOAD in SLOW
