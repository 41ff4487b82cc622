"""A Dagster run launcher for one host that forks run workers from a warm process.

Dagster's ``DefaultRunLauncher`` asks the code server to *spawn* a fresh interpreter per run, which
then imports Dagster, the kubernetes client and this code location before the first step: 2.3-2.9 s
on two cores, most of a standalone Task's apply-to-Job latency, and a full import's worth of CPU per
run. ``ForkingRunLauncher`` keeps one *zygote* process that imported all of that once; each run
worker is a fork of it that runs exactly what ``dagster api execute_run`` runs (the command
Dagster's K8s and Docker launchers start), so runs, steps, event logs, re-execution and termination
are Dagster's own.

One host only: the daemon launches, and ``terminate`` and the run-monitoring health check act on the
worker's pid (recorded as run tags with the host name). That is the local stack; deployments use
``K8sRunLauncher`` (``deploy/dagster/values.yaml``).

The zygote (``python -m kubetask_dagster.local.launcher``) reads one serialized ``ExecuteRunArgs`` per
line on stdin, forks, and answers the child's pid on its original stdout. The zygote ends when the
daemon closes its stdin; run workers go on. Zygote and workers stay in the daemon's process group, so
stopping the local stack (``deploy/local/dagster stop``) ends them with it, as it ended the code
server's spawned workers before.

The zygote also takes the same requests on a Unix socket in DAGSTER_HOME. Another process's launcher
(the webserver's, when ``PromptRunCoordinator`` launches a run at once) forks through it instead of
keeping a zygote of its own, so every run worker stays in the daemon's process group: stopping the
webserver alone ends none of them. ``warm()`` says whether such a zygote answers.
"""

from __future__ import annotations

import gc
import importlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from dagster import Field
from dagster import _check as check
from dagster._core.errors import DagsterLaunchFailedError
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value

from kubetask_dagster.execution import schema_checks
from kubetask_dagster.local import sqlite_tuning

PID_TAG = "kubetask/run-worker-pid"
HOST_TAG = "kubetask/run-worker-host"
ZYGOTE_MODULE = "kubetask_dagster.local.launcher"
SQLITE_FLAG = "--sqlite-synchronous"
SOCKET_FLAG = "--socket"
SOCKET_NAME = "run-worker-zygote.sock"
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes
_SOCKET_TIMEOUT_SECONDS = 10.0
CANCEL_WATCH_SECONDS = 60.0  # how long terminate watches an interrupted worker for an exit without a record

# What a run worker imports before its first step; definitions itself is left out because importing
# it outside a run lists the Batches from the API server.
PRELOAD = (
    "dagster._cli.api",
    "dagster._grpc.impl",
    "dagster._core.execution.api",
    "dagster_k8s.client",
    "kubernetes.client",
    "kubetask_dagster.jobs",
    "kubetask_dagster.assets",
    "kubetask_dagster.schedules",
    "kubetask_dagster.resources",
    "kubetask_dagster.catalog",
    # the instance's own classes, which a worker's instance imports when it first touches them
    "kubetask_dagster.local.compute_logs",
    "kubetask_dagster.execution.run_coordinator",
    "kubetask_dagster.ops.pool",
)


class ForkingRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run as a fork of a warm zygote process on this host."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, sqlite_synchronous: str | None = None):
        self._inst_data = inst_data
        self._sqlite_synchronous = sqlite_synchronous
        sqlite_tuning.apply(sqlite_synchronous)  # the daemon's own writes (queue, run status)
        self._zygote: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        super().__init__()

    def register_instance(self, instance: Any) -> None:
        """Also spare this process's instance (the webserver's, the daemon's) the schema checks it
        repeats for every run (``kubetask_dagster.execution.schema_checks``)."""
        super().register_instance(instance)
        schema_checks.share_migration_scripts()
        schema_checks.remember_run_table_columns(instance.run_storage)

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            "sqlite_synchronous": Field(
                str,
                is_required=False,
                description="PRAGMA synchronous of every SQLite connection of the daemon and the run workers "
                "(OFF for a throw-away local DAGSTER_HOME; see kubetask_dagster/local/sqlite_tuning.py).",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> ForkingRunLauncher:
        return cls(inst_data=inst_data, sqlite_synchronous=config_value.get("sqlite_synchronous"))

    # --- launching --------------------------------------------------------------------------------

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        args = ExecuteRunArgs(
            job_origin=check.not_none(run.job_code_origin), run_id=run.run_id, instance_ref=self._instance.get_ref()
        )
        pid = self._fork(serialize_value(args))
        self._instance.add_run_tags(run.run_id, {PID_TAG: str(pid), HOST_TAG: socket.gethostname()})

    def _fork(self, line: str) -> int:
        with self._lock:
            if self._zygote is None or self._zygote.poll() is not None:
                pid = _fork_through(self._socket_path(), line)  # another process's zygote, if one answers
                if pid is not None:
                    return pid
            for _ in range(2):  # a zygote found dead before it read the request is replaced once
                requests, replies = _pipes(self._running_zygote())
                try:
                    requests.write(line + "\n")
                    requests.flush()
                except (BrokenPipeError, OSError, ValueError):
                    self._stop_zygote()
                    continue
                # Once it has the request, asking again could start the run twice: no retry.
                try:
                    reply = replies.readline()
                except (OSError, ValueError):
                    reply = ""
                if reply.strip().isdigit():
                    return int(reply)
                self._stop_zygote()
                break
            raise DagsterLaunchFailedError("the run worker zygote did not answer; see the daemon's log")

    def _running_zygote(self) -> subprocess.Popen[str]:
        if self._zygote is None or self._zygote.poll() is not None:
            self._zygote = subprocess.Popen(
                [sys.executable, "-m", ZYGOTE_MODULE, *self._zygote_args()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            ready = _pipes(self._zygote)[1].readline().strip()
            if ready != "ready":
                self._stop_zygote()
                raise DagsterLaunchFailedError(
                    f"the run worker zygote failed to start ({ready!r}); see the daemon's log"
                )
        return self._zygote

    def _zygote_args(self) -> list[str]:
        args = [SQLITE_FLAG, self._sqlite_synchronous] if self._sqlite_synchronous else []
        path = self._socket_path()
        return [*args, SOCKET_FLAG, path] if path else args

    def _socket_path(self) -> str | None:
        """Where the zygote takes requests from other processes (None: no instance, or DAGSTER_HOME's path is too long)."""
        if not self.has_instance:
            return None
        path = os.path.join(self._instance.root_directory, SOCKET_NAME)
        return path if len(path.encode()) <= _MAX_SOCKET_PATH else None

    def warm(self) -> bool:
        """Whether a run launched now forks from a running zygote (this process's or another's) at once."""
        if self._zygote is not None and self._zygote.poll() is None:
            return True
        probe = _connect(self._socket_path(), timeout=1.0)
        if probe is None:
            return False
        probe.close()  # a connection that sends nothing is a probe to the zygote
        return True

    def start_zygote(self) -> bool:
        """Start this launcher's zygote now rather than at its first launch; whether one answers."""
        with self._lock:
            try:
                self._running_zygote()
            except DagsterLaunchFailedError:
                traceback.print_exc()  # the first launch tries again and fails the run with this error
                return False
        return True

    def _stop_zygote(self) -> None:
        if self._zygote is not None:
            try:
                _pipes(self._zygote)[0].close()
                self._zygote.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._zygote.kill()
            self._zygote = None

    def dispose(self) -> None:
        with self._lock:
            self._stop_zygote()

    # --- termination and health -----------------------------------------------------------------

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        pid = worker_pid(run)
        if pid is not None and not _is_run_worker(pid):
            # Its worker has exited (often just now, after recording the end that this read missed): no
            # process is left to record the cancellation, which run monitoring would only do minutes later.
            self._instance.report_run_canceled(run, f"Run worker {pid} had already exited")
            return False
        if pid is None:
            self._instance.report_engine_event(
                f"No run worker of this host to interrupt (pid {run.tags.get(PID_TAG)!r} on {run.tags.get(HOST_TAG)!r})",
                run,
                cls=self.__class__,
            )
            return False
        os.kill(pid, signal.SIGINT)  # what Dagster's own cancellation sends; the worker stops its steps
        threading.Thread(target=self._cancel_once_exited, args=(run_id, pid), daemon=True).start()
        return True

    def _cancel_once_exited(self, run_id: str, pid: int) -> None:
        """Record the cancellation of a run whose worker exited without doing so: one that had just
        recorded its end when the interrupt came, which the CANCELING write above then hid (run
        monitoring would end it only minutes later)."""
        deadline = time.monotonic() + CANCEL_WATCH_SECONDS
        while _is_run_worker(pid):
            if time.monotonic() > deadline:
                return  # still stopping its steps: it records the cancellation itself
            time.sleep(0.1)
        run = self._instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            self._instance.report_run_canceled(run, f"Run worker {pid} exited without recording the cancellation")

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        pid = worker_pid(run)
        if pid is None:  # another host's run, or tags not written yet: nothing known against it
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no run worker pid of this host recorded")
        if _is_run_worker(pid):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {pid} exited", run_worker_id=str(pid))


def _connect(path: str | None, *, timeout: float) -> socket.socket | None:
    """A connection to the zygote listening on ``path``; None when none listens there."""
    if path is None:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    return conn


def _fork_through(path: str | None, line: str) -> int | None:
    """Ask the zygote listening on ``path`` to fork a worker; its pid, or None when none listens there."""
    conn = _connect(path, timeout=_SOCKET_TIMEOUT_SECONDS)
    if conn is None:
        return None
    with conn:
        try:
            conn.sendall(line.encode() + b"\n")
            reply = conn.makefile("r").readline()
        except OSError:
            reply = ""
    if not reply.strip().isdigit():  # it may have the request: asking again could start the run twice
        raise DagsterLaunchFailedError(f"the run worker zygote at {path} did not answer; see the daemon's log")
    return int(reply)


def _pipes(zygote: subprocess.Popen[str]) -> tuple[IO[str], IO[str]]:
    """The zygote's stdin and stdout (always pipes: ``_running_zygote`` opens them)."""
    assert zygote.stdin is not None and zygote.stdout is not None
    return zygote.stdin, zygote.stdout


def worker_pid(run: DagsterRun) -> int | None:
    """The run worker's pid when it was forked on this host."""
    pid = run.tags.get(PID_TAG, "")
    if run.tags.get(HOST_TAG) != socket.gethostname() or not pid.isdigit():
        return None
    return int(pid)


def _is_run_worker(pid: int) -> bool:
    """The process exists and is a fork of a zygote (not an unrelated process that reused the pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return ZYGOTE_MODULE.encode() in cmdline and state != "Z"


# --- the zygote ---------------------------------------------------------------------------------


def serve(argv: list[str] | None = None) -> None:
    """Preload, then fork one run worker per request (a line of stdin, or a connection to the socket);
    answer each child's pid. Ends when stdin closes."""
    argv = sys.argv[1:] if argv is None else argv
    if SQLITE_FLAG in argv:
        sqlite_tuning.apply(argv[argv.index(SQLITE_FLAG) + 1])
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # everything else the zygote and its children print goes to stderr (the daemon's log)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished run workers
    _warm_up()
    listener = _listen(argv[argv.index(SOCKET_FLAG) + 1]) if SOCKET_FLAG in argv else None
    replies.write("ready\n")
    # One thread only: a fork copies no lock another thread holds.
    requests = sys.stdin
    events = selectors.DefaultSelector()
    stdin_fd = events.register(requests, selectors.EVENT_READ).fd
    if listener is not None:
        events.register(listener, selectors.EVENT_READ)
    try:
        while True:
            for key, _ in events.select():
                if key.fd == stdin_fd:
                    line = requests.readline()
                    if not line:
                        return
                    if line.strip():
                        replies.write(f"{_fork_worker(line.strip(), replies, listener)}\n")
                elif listener is not None:
                    _answer(listener, replies)
    finally:
        if listener is not None:
            _unlisten(listener)


def _listen(path: str) -> socket.socket | None:
    try:
        os.unlink(path)  # left by a zygote that was killed
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        previous = os.umask(0o177)  # the socket exists with mode 0600 from its first instant
        try:
            listener.bind(path)
        finally:
            os.umask(previous)
        listener.listen(16)
    except OSError:
        traceback.print_exc()  # launches from other processes then wait for the queue, as before
        listener.close()
        return None
    return listener


def _unlisten(listener: socket.socket) -> None:
    path = listener.getsockname()
    listener.close()
    try:
        os.unlink(path)
    except OSError:  # gone already
        pass


def _answer(listener: socket.socket, replies: IO[str]) -> None:
    """One request on the socket: a line to fork for (a probe sends nothing), answered with the pid."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(_SOCKET_TIMEOUT_SECONDS)
        try:
            line = conn.makefile("r").readline().strip()
            if line:
                conn.sendall(f"{_fork_worker(line, replies, listener, conn)}\n".encode())
        except OSError:
            traceback.print_exc()


def _fork_worker(line: str, replies: IO[str], *inherited: socket.socket | None) -> int:
    pid = os.fork()
    if pid == 0:
        replies.close()
        for sock in inherited:
            if sock is not None:
                sock.close()
        _run_worker(line)
    return pid


def _warm_up() -> None:
    """Import what every run worker imports. Opening the instance once imports its storages'
    modules (SQLAlchemy, alembic, the dialects), ~60% of a forked worker's CPU without it; the
    instance is closed again so no connection crosses the fork."""
    for module in PRELOAD:
        importlib.import_module(module)
    schema_checks.share_migration_scripts()
    try:
        from dagster import DagsterInstance

        with DagsterInstance.get() as instance:
            instance.get_runs(limit=1)
    except Exception:  # noqa: BLE001 - only an optimisation: workers import what is missing themselves
        traceback.print_exc()
    # What is warm now stays shared with the workers: a collection in a child no longer walks (and so
    # copies) every page of these objects (Python's advice for fork without exec, gc.freeze)
    gc.collect()
    gc.freeze()


def _run_worker(serialized_args: str) -> None:
    """In the forked child: execute the run, then exit (never return into the zygote's loop)."""
    code = 0
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the run may wait on subprocesses of its own
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        from dagster._cli.api import execute_run_command

        execute_run_command.callback(input_json=serialized_args, compressed_input_json=None)  # type: ignore[misc]
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - a worker must exit, never return into the zygote's loop
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    serve()
