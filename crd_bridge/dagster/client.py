"""The bridge's one adapter over Dagster: raw GraphQL over HTTP to dagster-webserver's ``/graphql``.

One ``DagsterClient`` per bridge process serves the Task and BatchRun reconcilers and the Batch sync
(code-location reloads, schedule toggles); its documents are in ``queries``.

``DagsterGraphQLClient`` folds every failure into one exception type, which hides the one distinction
the bridge needs (unreachable: retry later; rejected: fail the Task), and has no runs-by-tag query;
so this module speaks GraphQL with ``requests`` directly. Every query names the code location and the
repository, so no lookup precedes a submission.

Errors:

- ``DagsterUnavailable``: the webserver cannot be reached, answers 5xx, or the code location is not
  loaded. Requests are retried a few times with exponential backoff; after that the client stays
  "down" for a capped, growing interval during which calls fail at once (no request), so that a
  pass over many Tasks costs one timeout, not one per Task. Never fatal: callers try again later.
- ``DagsterRejected``: Dagster refused the submission for good (invalid run config, unknown job).
- ``RunNotFound``: Dagster has no run with that id.
- ``DagsterError``: anything else unexpected (e.g. a GraphQL error: a version mismatch).

A mutation whose request may have reached the server (read timeout) is never re-sent by this client;
the caller re-checks by tag before submitting again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from .queries import (
    LOCATIONS,
    LOGS,
    REEXECUTE,
    REEXECUTE_STEPS,
    RUN,
    RUN_FOR_REEXECUTION,
    RUNS,
    SLOW,
    SUBMIT,
    TERMINATE,
)

log = logging.getLogger(__name__)

FINISHED_STATUSES = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
ACTIVE_STATUSES = ("QUEUED", "NOT_STARTED", "MANAGED", "STARTING", "STARTED", "SUSPENDED", "CANCELING")
MAX_MESSAGE = 4000
SLOW_TIMEOUT = 60.0
"""HTTP timeout of the documents in ``queries.SLOW`` (at least; a reload re-imports the code location)."""


class DagsterError(Exception):
    """An answer from Dagster the bridge did not expect."""


class DagsterUnavailable(DagsterError):
    """Dagster cannot be reached (or cannot serve the job right now); try again later."""


class DagsterRejected(DagsterError):
    """Dagster refused a submission for good (``kind`` is the GraphQL type, e.g. RunConfigValidationInvalid)."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class RunNotFound(DagsterError):
    """Dagster has no run with this id."""


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    status: str
    tags: Mapping[str, str] = field(default_factory=dict)
    creation_time: float | None = None
    start_time: float | None = None
    end_time: float | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @classmethod
    def from_graphql(cls, run: Mapping[str, Any]) -> RunInfo:
        return cls(
            run_id=run["runId"],
            status=run["status"],
            tags={t["key"]: t["value"] for t in run.get("tags") or []},
            creation_time=run.get("creationTime"),
            start_time=run.get("startTime"),
            end_time=run.get("endTime"),
        )


# Tag Dagster puts on a re-execution: the run it re-executes.
PARENT_RUN_ID_TAG = "dagster/parent_run_id"

# Exceptions behind a PythonError answer to launchRunReexecution that no retry will fix (the parent
# has nothing to re-execute, or does not exist).
_PERMANENT_REEXECUTION_ERRORS = {
    "DagsterInvariantViolationError",  # "Cannot reexecute from failure a run that is not failed or canceled"
    "DagsterInvalidSubsetError",  # "No steps needed to be retried in the failed run."
    "CheckError",  # "Could not find parent run with id: ..."
    "DagsterRunNotFoundError",
}

# Submission refusals that no retry will fix.
_PERMANENT = {
    "RunConfigValidationInvalid",
    "InvalidStepError",
    "InvalidOutputError",
    "InvalidSubsetError",
    "PresetNotFoundError",
    "ConflictingExecutionParamsError",
    "NoModeProvidedError",
    "RunConflict",
}


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": str(v)} for k, v in tags.items()]


class DagsterClient:
    """Submit, find, follow and terminate runs of one repository in one code location."""

    def __init__(
        self,
        url: str,
        *,
        location: str = "kubetask",
        repository: str = "__repository__",
        timeout: float = 10.0,
        attempts: int = 3,
        retry_initial: float = 0.5,
        down_initial: float = 1.0,
        down_cap: float = 15.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_availability: Callable[[bool], None] | None = None,
    ):
        self.url = url.rstrip("/")
        self.endpoint = f"{self.url}/graphql"
        self.location = location
        self.repository = repository
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.retry_initial = retry_initial
        self.down_initial = down_initial
        self.down_cap = down_cap
        self._session = session or requests.Session()
        self._sleep = sleep
        self._clock = clock
        self._on_availability = on_availability
        self._lock = threading.Lock()
        self._failures = 0
        self._down_until = 0.0
        self._last_error = ""
        self._reported: bool | None = None

    # --- transport ---------------------------------------------------------------------------

    @property
    def failing(self) -> bool:
        """True from a failed request until the next successful one."""
        with self._lock:
            return self._failures > 0

    @property
    def available(self) -> bool:
        """False while the client is in its "down" interval after repeated failures."""
        with self._lock:
            return self._failures == 0 or self._clock() >= self._down_until

    def _mark(self, ok: bool, error: str = "") -> None:
        with self._lock:
            was_up = self._failures == 0
            if ok:
                self._failures = 0
                self._down_until = 0.0
            else:
                self._failures += 1
                delay = min(self.down_cap, self.down_initial * 2 ** (self._failures - 1))
                self._down_until = self._clock() + delay
                self._last_error = error
            report = self._reported is not ok
            self._reported = ok
        if self._on_availability is not None and report:
            try:
                self._on_availability(ok)
            except Exception:  # a metrics hook must never break a call
                log.debug("availability hook failed", exc_info=True)
        if not ok and was_up:
            log.warning("Dagster at %s is unavailable (%s); retrying with backoff", self.url, error)
        if ok and not was_up:
            log.info("Dagster at %s is reachable again", self.url)

    def execute(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        *,
        mutation: bool = False,
        data_on_error: bool = False,
    ) -> dict[str, Any]:
        """POST one GraphQL document; the ``data`` of the answer.

        Connection failures (the request never reached the server) are retried; read timeouts and 5xx
        answers are retried only for queries, never for mutations. With ``data_on_error``, an HTTP 500
        whose body is a GraphQL answer with ``data`` is that answer (dagster-webserver answers a
        mutation that raised with 500 and a ``PythonError`` in ``data``).
        """
        with self._lock:
            waiting = self._down_until - self._clock() if self._failures else 0.0
            last = self._last_error
        if waiting > 0:
            raise DagsterUnavailable(f"Dagster at {self.url} is unreachable ({last}); next attempt in {waiting:.1f} s")
        timeout = max(self.timeout, SLOW_TIMEOUT) if query in SLOW else self.timeout
        body = {"query": query, "variables": dict(variables or {})}
        error = ""
        for attempt in range(self.attempts):
            retryable = True
            try:
                resp = self._session.post(self.endpoint, json=body, timeout=timeout)
            except requests.ConnectionError as e:  # includes ConnectTimeout: nothing reached the server
                error = f"connection failed: {type(e).__name__}"
            except requests.RequestException as e:  # read timeout and the like: maybe processed
                error = f"request failed: {type(e).__name__}"
                retryable = not mutation
            else:
                answered = self._data_of_error(resp) if data_on_error and resp.status_code == 500 else None
                if answered is not None:
                    self._mark(True)
                    return answered
                if resp.status_code >= 500 or resp.status_code == 429:
                    error = f"HTTP {resp.status_code}"
                    retryable = not mutation or resp.status_code in (502, 503)
                else:
                    try:
                        payload = resp.json()
                    except ValueError:
                        self._mark(True)
                        raise DagsterError(
                            f"HTTP {resp.status_code}: answer is not JSON: {resp.text[:200]!r}"
                        ) from None
                    self._mark(True)
                    errors = payload.get("errors") if isinstance(payload, dict) else None
                    if errors or resp.status_code >= 400:
                        messages = "; ".join(str(e.get("message", e)) for e in errors or []) or resp.text[:300]
                        raise DagsterError(f"GraphQL error (HTTP {resp.status_code}): {messages}")
                    return payload.get("data") or {}
            if not retryable:
                break
            if attempt + 1 < self.attempts:
                self._sleep(self.retry_initial * 2**attempt)
        self._mark(False, error)
        raise DagsterUnavailable(f"Dagster at {self.url}: {error}")

    @staticmethod
    def _data_of_error(resp: Any) -> dict[str, Any] | None:
        try:
            payload = resp.json()
        except ValueError:
            return None
        data = payload.get("data") if isinstance(payload, dict) else None
        return data if isinstance(data, dict) and any(v is not None for v in data.values()) else None

    # --- runs --------------------------------------------------------------------------------

    def submit_run(self, job: str, run_config: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """Launch ``job`` with run config and tags; the new run id (the run is usually QUEUED)."""
        params = {
            "selector": {"repositoryLocationName": self.location, "repositoryName": self.repository, "jobName": job},
            "runConfigData": dict(run_config),
            "executionMetadata": {"tags": tag_list(tags)},
        }
        result = self.execute(SUBMIT, {"executionParams": params}, mutation=True)["launchRun"]
        kind = result["__typename"]
        if kind == "LaunchRunSuccess":
            return result["run"]["runId"]
        if kind == "RunConfigValidationInvalid":
            message = "; ".join(e["message"] for e in result.get("errors") or []) or "invalid run config"
            raise DagsterRejected(kind, message[:MAX_MESSAGE])
        if kind == "InvalidStepError":
            raise DagsterRejected(kind, f"invalid step {result.get('invalidStepKey')}")
        if kind == "InvalidOutputError":
            raise DagsterRejected(
                kind, f"invalid output {result.get('invalidOutputName')} of step {result.get('stepKey')}"
            )
        message = (result.get("message") or kind)[:MAX_MESSAGE]
        if kind in _PERMANENT:
            raise DagsterRejected(kind, message)
        if kind == "PipelineNotFoundError":
            # While the code location (re)loads, its jobs are briefly unknown: only a loaded location
            # that lacks the job is a permanent error.
            state, detail = self.location_state()
            if state == "LOADED":
                raise DagsterRejected(kind, message)
            raise DagsterUnavailable(f"code location {self.location} is {state}: {detail or message}"[:MAX_MESSAGE])
        # PythonError, UnauthorizedError: Dagster-side trouble a later attempt may not hit.
        raise DagsterUnavailable(f"launchRun answered {kind}: {message}")

    def find_runs(
        self,
        tags: Mapping[str, str],
        *,
        statuses: Iterable[str] | None = None,
        limit: int | None = 100,
        created_after: float | None = None,
    ) -> list[RunInfo]:
        """Runs carrying all ``tags`` (newest first), optionally only in ``statuses`` or created after a
        Unix time."""
        flt: dict[str, Any] = {"tags": tag_list(tags)}
        if statuses is not None:
            flt["statuses"] = list(statuses)
        if created_after is not None:
            flt["createdAfter"] = created_after
        result = self.execute(RUNS, {"filter": flt, "limit": limit})["runsOrError"]
        if result["__typename"] != "Runs":
            raise DagsterError(f"runsOrError answered {result['__typename']}: {result.get('message')}")
        return [RunInfo.from_graphql(r) for r in result["results"]]

    def get_run(self, run_id: str) -> RunInfo:
        result = self.execute(RUN, {"runId": run_id})["runOrError"]
        kind = result["__typename"]
        if kind == "Run":
            return RunInfo.from_graphql(result)
        if kind == "RunNotFoundError":
            raise RunNotFound(result.get("message") or f"run {run_id} not found")
        raise DagsterError(f"runOrError answered {kind}: {result.get('message')}")

    def get_runs(self, run_ids: Iterable[str], *, chunk: int = 200) -> dict[str, RunInfo]:
        """The runs among ``run_ids`` that exist, by id (one query per ``chunk`` ids)."""
        ids = list(dict.fromkeys(run_ids))
        found: dict[str, RunInfo] = {}
        for i in range(0, len(ids), chunk):
            part = ids[i : i + chunk]
            result = self.execute(RUNS, {"filter": {"runIds": part}, "limit": len(part)})["runsOrError"]
            if result["__typename"] != "Runs":
                raise DagsterError(f"runsOrError answered {result['__typename']}: {result.get('message')}")
            for r in result["results"]:
                info = RunInfo.from_graphql(r)
                found[info.run_id] = info
        return found

    def failure_message(self, run_id: str, *, page: int = 1000, max_pages: int = 10) -> str | None:
        """Why a run failed, for a person: the last step failure's error, else the run worker's, else the run's."""
        step: str | None = None
        engine: str | None = None
        run_failure: str | None = None
        cursor: str | None = None
        for _ in range(max_pages):
            result = self.execute(LOGS, {"runId": run_id, "cursor": cursor, "limit": page})["logsForRun"]
            kind = result["__typename"]
            if kind == "RunNotFoundError":
                raise RunNotFound(result.get("message") or f"run {run_id} not found")
            if kind != "EventConnection":
                raise DagsterError(f"logsForRun answered {kind}: {result.get('message')}")
            for ev in result["events"]:
                typename = ev.get("__typename")
                error = (ev.get("error") or {}).get("message")
                if typename == "ExecutionStepFailureEvent":
                    text = (error or ev.get("message") or "").strip()
                    text = text.removeprefix("dagster._core.definitions.events.Failure: ")  # the op's own words
                    step = f"step {ev.get('stepKey')} failed: {text}" if ev.get("stepKey") else text
                elif typename == "EngineEvent" and error:
                    engine = f"{ev.get('message', '').strip()} {error.strip()}".strip()
                elif typename == "RunFailureEvent":
                    run_failure = " ".join(x.strip() for x in (ev.get("message"), error) if x)
            cursor = result.get("cursor")
            if not result.get("hasMore"):
                break
        message = step or engine or run_failure
        return message[:MAX_MESSAGE] if message else None

    def terminate_run(self, run_id: str) -> str:
        """Ask Dagster to terminate a run: ``terminated``, ``not-terminable`` (already finished) or ``not-found``."""
        result = self.execute(TERMINATE, {"runId": run_id}, mutation=True)["terminateRun"]
        kind = result["__typename"]
        if kind == "TerminateRunSuccess":
            return "terminated"
        if kind == "TerminateRunFailure":
            log.info("Dagster did not terminate run %s: %s", run_id, result.get("message"))
            return "not-terminable"
        if kind == "RunNotFoundError":
            return "not-found"
        if kind == "PythonError":
            raise DagsterUnavailable(f"terminateRun answered PythonError: {result.get('message')}")
        raise DagsterError(f"terminateRun answered {kind}: {result.get('message')}")

    def reexecute_run(
        self,
        parent_run_id: str,
        *,
        strategy: str = "FROM_FAILURE",
        use_parent_run_tags: bool = True,
        extra_tags: Mapping[str, str] | None = None,
    ) -> str:
        """Launch a re-execution of ``parent_run_id`` (``FROM_FAILURE``: its failed and never-started steps
        only); the new run id. The new run carries ``dagster/parent_run_id`` and, with
        ``use_parent_run_tags``, the parent's tags. ``DagsterRejected`` when there is nothing to re-execute
        (the parent succeeded, is still running, or does not exist)."""
        params: dict[str, Any] = {
            "parentRunId": parent_run_id,
            "strategy": strategy,
            "useParentRunTags": use_parent_run_tags,
        }
        if extra_tags:
            params["extraTags"] = tag_list(extra_tags)
        result = self.execute(REEXECUTE, {"params": params}, mutation=True, data_on_error=True)["launchRunReexecution"]
        kind = result["__typename"]
        if kind == "LaunchRunSuccess":
            return result["run"]["runId"]
        message = (result.get("message") or kind).strip()[:MAX_MESSAGE]
        if kind == "PythonError":
            cls = result.get("className") or ""
            if cls in _PERMANENT_REEXECUTION_ERRORS:
                raise DagsterRejected(cls, message)
            raise DagsterUnavailable(f"launchRunReexecution answered PythonError ({cls}): {message}")
        if kind in _PERMANENT or kind in ("RunNotFoundError", "PipelineNotFoundError"):
            raise DagsterRejected(kind, message)
        raise DagsterUnavailable(f"launchRunReexecution answered {kind}: {message}")

    def reexecute_steps(self, parent_run_id: str, step_keys: list[str]) -> str:
        """Launch a re-execution of exactly ``step_keys`` of ``parent_run_id`` (with its run config and
        tags, as Dagster's "re-execute selected steps" does); the new run id.

        Used instead of FROM_FAILURE for a BatchRun whose run was terminated midway: Dagster's
        FROM_FAILURE leaves out mapped steps that never started, so their Tasks would never run."""
        run = self.execute(RUN_FOR_REEXECUTION, {"id": parent_run_id})["runOrError"]
        if run["__typename"] != "Run":
            raise DagsterRejected(run["__typename"], (run.get("message") or "run not found")[:MAX_MESSAGE])
        root = run["rootRunId"] or parent_run_id
        tags = [t for t in run["tags"] if not t["key"].startswith("dagster/")] + tag_list(
            {
                # what Dagster's UI sets for "re-execute selected steps"; the bridge finds its reruns by them
                "dagster/parent_run_id": parent_run_id,
                "dagster/root_run_id": root,
                "dagster/step_selection": ",".join(step_keys),
            }
        )
        params = {
            "selector": {
                "repositoryLocationName": self.location,
                "repositoryName": self.repository,
                "jobName": run["jobName"],
            },
            "runConfigData": run["runConfigYaml"],
            "executionMetadata": {"parentRunId": parent_run_id, "rootRunId": root, "tags": tags},
            "stepKeys": step_keys,
        }
        result = self.execute(REEXECUTE_STEPS, {"params": params}, mutation=True, data_on_error=True)[
            "launchRunReexecution"
        ]
        if result["__typename"] == "LaunchRunSuccess":
            return result["run"]["runId"]
        message = (result.get("message") or result["__typename"]).strip()[:MAX_MESSAGE]
        raise DagsterRejected(result.get("className") or result["__typename"], message)

    def location_state(self) -> tuple[str, str | None]:
        """(``LOADED`` | ``LOADING`` | ``ERROR`` | ``MISSING``, detail) of this client's code location."""
        result = self.execute(LOCATIONS)["workspaceOrError"]
        if result["__typename"] != "Workspace":
            return "ERROR", result.get("message")
        for entry in result["locationEntries"]:
            if entry["name"] != self.location:
                continue
            loaded = entry.get("locationOrLoadError") or {}
            if loaded.get("__typename") == "PythonError":
                return "ERROR", loaded.get("message")
            return entry["loadStatus"], None
        return "MISSING", f"no code location named {self.location}"
