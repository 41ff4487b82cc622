"""Every GraphQL document the bridge sends to dagster-webserver, in one place.

``ALL_QUERIES`` lists them all; a unit test validates each against the installed Dagster's schema, so
a Dagster upgrade that renames a field fails in CI, not in a cluster. Each document names its
operation ``Bridge...`` (the fakes in the tests dispatch on that name).
"""

from __future__ import annotations

_RUN_FIELDS = "runId status creationTime startTime endTime tags { key value }"

SUBMIT = """
mutation BridgeSubmit($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
    ... on Error { message }
  }
}
"""

RUNS = f"""
query BridgeRuns($filter: RunsFilter, $limit: Int) {{
  runsOrError(filter: $filter, limit: $limit) {{
    __typename
    ... on Runs {{ results {{ {_RUN_FIELDS} }} }}
    ... on Error {{ message }}
  }}
}}
"""

RUN = f"""
query BridgeRun($runId: ID!) {{
  runOrError(runId: $runId) {{
    __typename
    ... on Run {{ {_RUN_FIELDS} }}
    ... on Error {{ message }}
  }}
}}
"""

LOGS = """
query BridgeLogs($runId: ID!, $cursor: String, $limit: Int) {
  logsForRun(runId: $runId, afterCursor: $cursor, limit: $limit) {
    __typename
    ... on EventConnection {
      cursor
      hasMore
      events {
        __typename
        ... on ExecutionStepFailureEvent { stepKey message error { message className } }
        ... on RunFailureEvent { message error { message className } }
        ... on EngineEvent { message error { message className } }
      }
    }
    ... on Error { message }
  }
}
"""

TERMINATE = """
mutation BridgeTerminate($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunSuccess { run { runId } }
    ... on TerminateRunFailure { message run { status } }
    ... on Error { message }
  }
}
"""

LOCATIONS = """
query BridgeLocations {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries { name loadStatus locationOrLoadError { __typename ... on PythonError { message } } }
    }
    ... on Error { message }
  }
}
"""

REEXECUTE = """
mutation BridgeReexecute($params: ReexecutionParams!) {
  launchRunReexecution(reexecutionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message className }
    ... on Error { message }
  }
}
"""

REEXECUTE_STEPS = """
mutation BridgeReexecuteSteps($params: ExecutionParams!) {
  launchRunReexecution(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message className }
    ... on Error { message }
  }
}
"""

RUN_FOR_REEXECUTION = """
query BridgeRunForReexecution($id: ID!) {
  runOrError(runId: $id) {
    __typename
    ... on Run { jobName runConfigYaml rootRunId tags { key value } }
    ... on Error { message }
  }
}
"""

RELOAD = """
mutation BridgeReload($location: String!) {
  reloadRepositoryLocation(repositoryLocationName: $location) {
    __typename
    ... on WorkspaceLocationEntry {
      name loadStatus
      locationOrLoadError { __typename ... on PythonError { message } }
    }
    ... on Error { message }
  }
}
"""

SCHEDULES = """
query BridgeSchedules($selector: RepositorySelector!) {
  schedulesOrError(repositorySelector: $selector) {
    __typename
    ... on Schedules { results { name cronSchedule executionTimezone scheduleState { id status } } }
    ... on Error { message }
  }
}
"""

START_SCHEDULE = """
mutation BridgeStartSchedule($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on Error { message }
  }
}
"""

STOP_SCHEDULE = """
mutation BridgeStopSchedule($id: String!) {
  stopRunningSchedule(id: $id) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on Error { message }
  }
}
"""

ALL_QUERIES = {
    "submit": SUBMIT,
    "runs": RUNS,
    "run": RUN,
    "logs": LOGS,
    "terminate": TERMINATE,
    "locations": LOCATIONS,
    "reexecute-steps": REEXECUTE_STEPS,
    "run-for-reexecution": RUN_FOR_REEXECUTION,
    "reexecute": REEXECUTE,
    "reload": RELOAD,
    "schedules": SCHEDULES,
    "start-schedule": START_SCHEDULE,
    "stop-schedule": STOP_SCHEDULE,
}

SLOW = frozenset({RELOAD, SCHEDULES, START_SCHEDULE, STOP_SCHEDULE})
"""The Batch sync's documents: a reload re-imports the code location, and the schedule calls may wait
for that load; they run on the sync's own thread, so a long timeout holds up no reconcile."""
