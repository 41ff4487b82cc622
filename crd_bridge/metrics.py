"""Prometheus metrics and health of the bridge, served by one small HTTP server.

- ``/healthz``: 200 while the operator's event loop and the bridge's periodic loop keep beating and the
  kopf operator task is running; 503 otherwise (a liveness probe).
- ``/readyz``: 200 once kopf watches and the bridge's first full list is loaded (a readiness probe).
- ``/metrics``: Prometheus text format from this module's own registry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

SUBMISSIONS = Counter("kubetask_bridge_submissions_total", "Dagster runs submitted for Tasks.", registry=REGISTRY)
ADOPTED = Counter(
    "kubetask_bridge_runs_adopted_total",
    "Tasks given a run that already existed (found by tags) instead of a new submission.",
    registry=REGISTRY,
)
SUBMISSION_ERRORS = Counter(
    "kubetask_bridge_submission_errors_total",
    "Failed submissions, by kind: unavailable (retried) or rejected (Task Failed).",
    ["kind"],
    registry=REGISTRY,
)
AGENT_TOKENS = Counter(
    "kubetask_agent_tokens_total",
    "Tokens the agents' results reported, by namespace, WorkspaceConfig and direction (input, output).",
    ["namespace", "workspace_config", "direction"],
    registry=REGISTRY,
)
AGENT_COST = Counter(
    "kubetask_agent_cost_usd_total",
    "US dollars the agents' results reported, by namespace and WorkspaceConfig.",
    ["namespace", "workspace_config"],
    registry=REGISTRY,
)
AGENT_PULL_REQUESTS = Counter(
    "kubetask_agent_pull_requests_total",
    "Pull requests the agents' results reported, by namespace and WorkspaceConfig.",
    ["namespace", "workspace_config"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "kubetask_bridge_reconcile_errors_total", "Reconciles that raised an unexpected exception.", registry=REGISTRY
)
DRIFT_CORRECTIONS = Counter(
    "kubetask_bridge_drift_corrections_total",
    "Terminal statuses written by the bridge because the run ended without writing one, by reason.",
    ["reason"],
    registry=REGISTRY,
)
TERMINATIONS = Counter(
    "kubetask_bridge_terminations_total",
    "Dagster runs the bridge asked to terminate, by cause.",
    ["cause"],
    registry=REGISTRY,
)
TRANSITIONS = Counter(
    "kubetask_bridge_status_writes_total",
    "Task status writes by the bridge, by phase written.",
    ["phase"],
    registry=REGISTRY,
)
CONFLICTS = Counter(
    "kubetask_bridge_status_conflicts_total",
    "Status writes refused with 409 (re-read and re-decided).",
    registry=REGISTRY,
)
SUBMIT_LATENCY = Histogram(
    "kubetask_bridge_submit_latency_seconds",
    "Duration of one launchRun call.",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30),
    registry=REGISTRY,
)
TASK_TO_RUN = Histogram(
    "kubetask_bridge_task_to_run_seconds",
    "From a Task's creationTimestamp to its run's submission (includes time spent Queued).",
    buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600),
    registry=REGISTRY,
)
QUEUED = Gauge(
    "kubetask_bridge_queued_tasks", "Tasks in phase Queued (waiting for a WorkspaceConfig slot).", registry=REGISTRY
)
WORKSPACE_TASKS = Gauge(
    "kubetask_workspace_tasks",
    "Tasks of a WorkspaceConfig now, by state: running, or queued (waiting for a slot, a rate limit, the quota "
    "or the budget).",
    ["namespace", "workspace_config", "state"],
    registry=REGISTRY,
)
TIME_QUEUED = Histogram(
    "kubetask_task_queued_seconds",
    "How long a Task waited in phase Queued before it ran or ended (observed when it leaves Queued).",
    ["namespace", "workspace_config"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600),
    registry=REGISTRY,
)
TASK_DURATION = Histogram(
    "kubetask_task_duration_seconds",
    "From a Task's first start to its end (status.startTime to completionTime), by outcome (its final phase).",
    ["namespace", "workspace_config", "outcome"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600),
    registry=REGISTRY,
)
WORK_QUEUE = Gauge("kubetask_bridge_work_queue_length", "Task keys waiting for a reconcile worker.", registry=REGISTRY)
TASKS = Gauge("kubetask_bridge_tasks", "Tasks in the bridge's cache, by phase.", ["phase"], registry=REGISTRY)
DAGSTER_UP = Gauge(
    "kubetask_bridge_dagster_up", "1 when Dagster's GraphQL answered the last request.", registry=REGISTRY
)

# --- BatchRuns (crd_bridge.batchruns) ---------------------------------------------------------------
BATCHRUN_SUBMISSIONS = Counter(
    "kubetask_bridge_batchrun_submissions_total",
    "Dagster runs of batch_job submitted for BatchRuns.",
    registry=REGISTRY,
)
BATCHRUN_ADOPTED = Counter(
    "kubetask_bridge_batchrun_runs_adopted_total",
    "BatchRuns switched to a run they did not get from a bridge submission, by how it was found: "
    "existing (found by tags before submitting), successor (a re-execution started from Dagster) or rerun-found.",
    ["how"],
    registry=REGISTRY,
)
BATCHRUN_SUBMISSION_ERRORS = Counter(
    "kubetask_bridge_batchrun_submission_errors_total",
    "Failed BatchRun submissions and re-executions, by kind: unavailable (retried) or rejected.",
    ["kind"],
    registry=REGISTRY,
)
BATCHRUN_RERUNS = Counter(
    "kubetask_bridge_batchrun_reruns_total",
    "kubetask.io/rerun requests handled, by outcome: started, nothing (no failed Task) or refused.",
    ["outcome"],
    registry=REGISTRY,
)
BATCHRUN_STATUS_WRITES = Counter(
    "kubetask_bridge_batchrun_status_writes_total",
    "BatchRun status writes by the bridge, by kind: submitted, progress, final, rerun, adopted, stopped.",
    ["kind"],
    registry=REGISTRY,
)
BATCHRUN_PROGRESS_SKIPPED = Counter(
    "kubetask_bridge_batchrun_progress_skipped_total",
    "Progress computations that wrote nothing, by why: unchanged or debounced (a write is due later).",
    ["why"],
    registry=REGISTRY,
)
BATCHRUN_TASKS_ENDED = Counter(
    "kubetask_bridge_batchrun_tasks_ended_total",
    "Tasks of a BatchRun the bridge marked Stopped (RunEnded) because the BatchRun's run ended before them.",
    registry=REGISTRY,
)
RELOADS = Counter(
    "kubetask_bridge_location_reloads_total",
    "Code-location reloads after Batch changes, by result.",
    ["result"],
    registry=REGISTRY,
)
TOGGLES = Counter(
    "kubetask_bridge_schedule_toggles_total",
    "Schedules started or stopped to follow spec.schedule.suspend.",
    ["action"],
    registry=REGISTRY,
)
BATCHRUNS = Gauge(
    "kubetask_bridge_batchruns", "BatchRuns in the bridge's cache, by phase.", ["phase"], registry=REGISTRY
)
BATCHRUN_WORK_QUEUE = Gauge(
    "kubetask_bridge_batchrun_work_queue_length", "BatchRun keys waiting for a reconcile worker.", registry=REGISTRY
)


class HealthProbe(Protocol):
    """What /healthz and /readyz ask: (ok, detail)."""

    def live(self) -> tuple[bool, str]: ...

    def ready(self) -> tuple[bool, str]: ...


class Health:
    """Heartbeats and flags behind /healthz and /readyz (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._beats: dict[str, tuple[float, float]] = {}  # name -> (last beat, max age)
        self._flags: dict[str, bool] = {}

    def beat(self, name: str, max_age: float) -> None:
        with self._lock:
            self._beats[name] = (self._clock(), max_age)

    def set(self, flag: str, value: bool) -> None:
        with self._lock:
            self._flags[flag] = value

    def live(self) -> tuple[bool, str]:
        now = self._clock()
        with self._lock:
            stale = [f"{n} silent for {now - t:.0f} s" for n, (t, age) in self._beats.items() if now - t > age]
            down = [f for f in ("operator",) if self._flags.get(f) is False]
        problems = stale + [f"{f} stopped" for f in down]
        return (not problems, "; ".join(problems) or "ok")

    def ready(self) -> tuple[bool, str]:
        ok, detail = self.live()
        with self._lock:
            missing = [f for f in ("watching", "synced") if not self._flags.get(f)]
        if missing:
            return False, "not yet: " + ", ".join(missing)
        return ok, detail


def _handler(health: HealthProbe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, code, ctype = generate_latest(REGISTRY), 200, CONTENT_TYPE_LATEST
            elif path in ("/healthz", "/livez", "/readyz"):
                ok, detail = health.ready() if path == "/readyz" else health.live()
                body, code, ctype = (detail + "\n").encode(), 200 if ok else 503, "text/plain; charset=utf-8"
            else:
                body, code, ctype = b"not found\n", 404, "text/plain; charset=utf-8"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: keep quiet
            log.debug("http %s", format % args)

    return Handler


def serve(host: str, port: int, health: HealthProbe) -> ThreadingHTTPServer:
    """Start the /healthz + /metrics server in a daemon thread; ``shutdown()`` the result to stop it."""
    server = ThreadingHTTPServer((host, port), _handler(health))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="bridge-http", daemon=True)
    thread.start()
    log.info("serving /healthz, /readyz and /metrics on http://%s:%d", host, server.server_address[1])
    return server
