"""The Dagster edge: its webserver's GraphQL API, over ``requests`` (the plugin imports no Dagster package)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests

from kubetask.domain import kept_logs

from .errors import PluginError, connection_problem, dagster_unreachable

ENV_URL = "KUBETASK_DAGSTER_URL"
"""The environment variable naming Dagster's webserver when --dagster-url is not given."""

TIMEOUT = (5.0, 60.0)
CHUNK = 8 * 1024 * 1024
"""Bytes of a compute log read per GraphQL call."""
EVENT_PAGE = 5000


def base_url(flag: str | None, env: Mapping[str, str], run_url: str | None) -> str | None:
    """Dagster's webserver: ``--dagster-url``, else ``$KUBETASK_DAGSTER_URL``, else what precedes
    ``/runs/<id>`` in ``status.dagsterRunUrl`` (the origin, and a path prefix when the UI has one)."""
    for given in (flag, env.get(ENV_URL)):
        if given and given.strip():
            return given.strip().rstrip("/")
    if not run_url:
        return None
    parts = urlsplit(run_url)
    if not parts.scheme or not parts.netloc:
        return None
    path = parts.path
    prefix = path[: path.rfind("/runs/")] if "/runs/" in path else ""
    return f"{parts.scheme}://{parts.netloc}{prefix.rstrip('/')}"


class Dagster:
    """A client of one Dagster webserver's GraphQL endpoint."""

    def __init__(self, url: str, session: requests.Session | None = None) -> None:
        self.url = url.rstrip("/")
        self._session = session or requests.Session()

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The ``data`` of one query; ``PluginError`` when Dagster cannot be reached or answers with errors."""
        try:
            response = self._session.post(
                f"{self.url}/graphql", json={"query": query, "variables": dict(variables or {})}, timeout=TIMEOUT
            )
        except requests.RequestException as e:
            raise dagster_unreachable(self.url, connection_problem(e)) from None
        if response.status_code != 200:
            raise dagster_unreachable(self.url, f"HTTP {response.status_code} from {self.url}/graphql")
        try:
            body = response.json()
        except ValueError:
            raise dagster_unreachable(self.url, "its /graphql answered with something other than JSON") from None
        if body.get("errors"):
            message = str(body["errors"][0].get("message", body["errors"][0]))
            raise PluginError(f"Dagster at {self.url} refused the query: {message.splitlines()[0][:300]}")
        return body.get("data") or {}

    def run_status(self, run_id: str) -> str | None:
        """The run's status (``SUCCESS``, ``STARTED``, ``FAILURE``...); None when Dagster has no such run."""
        data = self.graphql(
            "query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }", {"id": run_id}
        )
        run = data.get("runOrError") or {}
        return run.get("status") if run.get("__typename") == "Run" else None

    def log_keys(self, run_id: str, step_key: str) -> list[list[str]]:
        """The compute-log keys of the run that hold the step's stdout: those of its ``LogsCapturedEvent`` that
        list the step (all of them when none does), as ``[run_id, "compute_logs", fileKey]``."""
        query = """query($id: ID!, $cursor: String, $limit: Int) {
          logsForRun(runId: $id, afterCursor: $cursor, limit: $limit) { __typename
            ... on EventConnection { cursor hasMore events { __typename ... on LogsCapturedEvent { fileKey stepKeys } } }
            ... on RunNotFoundError { message } ... on PythonError { message } } }"""
        captured: list[tuple[str, list[str]]] = []
        cursor: str | None = None
        while True:
            data = self.graphql(query, {"id": run_id, "cursor": cursor, "limit": EVENT_PAGE})["logsForRun"]
            if data.get("__typename") == "RunNotFoundError":
                return []
            if data.get("__typename") != "EventConnection":
                raise PluginError(
                    f"Dagster at {self.url} could not list the events of run {run_id}: {data.get('message')}"
                )
            for event in data["events"]:
                if event.get("__typename") == "LogsCapturedEvent":
                    captured.append((event["fileKey"], list(event.get("stepKeys") or [])))
            if not data.get("hasMore") or data.get("cursor") in (None, cursor):
                break
            cursor = data["cursor"]
        keys = [key for key, steps in captured if step_key in steps] or [key for key, _ in captured]
        return [[run_id, "compute_logs", key] for key in dict.fromkeys(keys)]

    def stdout_chunks(self, log_key: list[str]) -> Iterator[str]:
        """The captured stdout of ``log_key``, in chunks of at most ``CHUNK`` bytes."""
        query = """query($key: [String!]!, $cursor: String, $limit: Int) {
          capturedLogs(logKey: $key, cursor: $cursor, limit: $limit) { stdout cursor } }"""
        cursor: str | None = None
        while True:
            logs = self.graphql(query, {"key": log_key, "cursor": cursor, "limit": CHUNK})["capturedLogs"]
            text = logs.get("stdout") or ""
            if not text:
                return
            yield text
            if logs.get("cursor") in (None, cursor):
                return
            cursor = logs["cursor"]

    def kept_block(
        self, ref: kept_logs.KeptLogRef, namespace: str, name: str, attempt: int
    ) -> kept_logs.KeptBlock | None:
        """The block of attempt ``attempt`` of Task ``namespace/name`` in the stdout of ``ref``'s run and step."""
        found = None
        for key in self.log_keys(ref.run_id, ref.step_key):
            block = kept_logs.find_block(self.stdout_chunks(key), namespace, name, attempt)
            if block is not None and (found is None or block.complete or not found.complete):
                found = block
        return found
