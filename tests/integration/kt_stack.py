"""Session fixtures for the whole stack: Dagster (code server, webserver, daemon) and the CR bridge,
as real processes on 127.0.0.1 against the session's control plane."""

from __future__ import annotations

import functools
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from remote_files import RemoteFiles

ROOT = Path(__file__).resolve().parents[2]
DAGSTER_SCRIPT = ROOT / "deploy" / "local" / "dagster"


@functools.cache  # one directory per session, however many stacks ask
def _run_root() -> Path:
    root = Path(os.environ.get("KUBETASK_TEST_RUN_ROOT") or tempfile.mkdtemp(prefix="kubetask-test-"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass
class Dagster:
    url: str
    home: str
    env: dict[str, str]

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def run(self, run_id: str) -> dict[str, Any]:
        data = self.graphql(
            """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { runId status runConfigYaml
               tags { key value } stepStats { stepKey status attempts { startTime } } } } }""",
            {"id": run_id},
        )
        return data["runOrError"]

    def runs_with_tags(self, tags: dict[str, str]) -> list[dict[str, Any]]:
        data = self.graphql(
            """query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { ... on Runs { results { runId status } } } }""",
            {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        )
        return data["runsOrError"]["results"]

    def materializations(self, run_id: str, step: str | None = None) -> list[dict[str, Any]]:
        """The run's materializations (of ``step`` only, when given), each with its metadata as ``{label: value}``."""
        data = self.graphql(
            """query($id: ID!) { logsForRun(runId: $id, limit: 100000) { __typename
                 ... on EventConnection { events { __typename ... on MaterializationEvent { stepKey partition
                   assetKey { path } metadataEntries { label ... on TextMetadataEntry { text } ... on UrlMetadataEntry { url }
                     ... on FloatMetadataEntry { floatValue } ... on IntMetadataEntry { intValue } } } } } } }""",
            {"id": run_id},
        )
        found = []
        for event in data["logsForRun"]["events"]:
            if event["__typename"] != "MaterializationEvent" or (step is not None and event["stepKey"] != step):
                continue
            metadata = {e["label"]: next((e[k] for k in ("text", "url", "floatValue", "intValue") if k in e), None)
                        for e in event["metadataEntries"]}
            found.append({"step": event["stepKey"], "partition": event["partition"], "asset": event["assetKey"]["path"],
                          "metadata": metadata})
        return found

    def compute_logs(self, run_id: str) -> str:
        """What the run's steps printed, as Dagster keeps it (the local compute log manager's files)."""
        files = sorted((Path(self.home) / "storage" / run_id).glob("**/*.out"))
        return "".join(f.read_text(errors="replace") for f in files)

    def event_log_text(self, run_id: str) -> str:
        """Every event of the run, serialised: what a leak scan must search."""
        data = self.graphql(
            """query($id: ID!) { logsForRun(runId: $id, limit: 100000) { __typename
                 ... on EventConnection { events { __typename ... on MessageEvent { message level stepKey }
                   ... on MaterializationEvent { assetKey { path } partition metadataEntries { label description
                       ... on TextMetadataEntry { text } ... on JsonMetadataEntry { jsonString } ... on UrlMetadataEntry { url }
                       ... on FloatMetadataEntry { floatValue } ... on IntMetadataEntry { intValue } } }
                   ... on ObservationEvent { metadataEntries { label ... on TextMetadataEntry { text } ... on JsonMetadataEntry { jsonString } } }
                   ... on ExecutionStepOutputEvent { metadataEntries { label ... on JsonMetadataEntry { jsonString } } } } } } }""",
            {"id": run_id},
        )
        return json.dumps(data)


@pytest.fixture(scope="session")
def remote_files() -> Any:
    """The session's one server that RemoteFile contexts may reach (tests/integration/remote_files.py)."""
    files = RemoteFiles()
    yield files
    files.close()


@pytest.fixture(scope="session")
def dagster(cluster, remote_files) -> Any:
    home = _run_root() / f"dagster-{os.getpid()}"
    home.mkdir(parents=True, exist_ok=True)
    # RemoteFile may reach the session's remote_files server and nothing else: 127.0.0.1 on any other
    # port (Dagster's own, the control plane's) is refused as a private address would be in production.
    env = {**os.environ, "DAGSTER_HOME": str(home), "KUBECONFIG": cluster.kubeconfig,
           "KUBETASK_REMOTE_FILE_ALLOW": remote_files.allow}
    try:
        out = subprocess.run([str(DAGSTER_SCRIPT), "start"], env=env, check=True, capture_output=True, text=True, timeout=300).stdout
        values = dict(shlex.split(line)[1].split("=", 1) for line in out.splitlines() if line.startswith("export "))
        yield Dagster(url=values["DAGSTER_URL"], home=str(home), env=env)
    finally:
        subprocess.run([str(DAGSTER_SCRIPT), "stop"], env=env, check=False, capture_output=True, timeout=120)


CRASH_AFTER_SUBMIT = "tests.integration.crash_after_submit"
"""The bridge, exiting (137) right after its first Task submission, before the status write."""


@dataclass
class Bridge:
    """The CR bridge as a real process; tests may kill and restart it."""

    env: dict[str, str]
    log_path: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    def start(self, extra_env: dict[str, str] | None = None, module: str = "crd_bridge") -> None:
        """Start ``python -m <module>`` with the bridge's flags: ``crd_bridge``, or a test seam that runs
        it (``CRASH_AFTER_SUBMIT``)."""
        log = open(self.log_path, "a")
        # beside its log, removed with the test run: the kubernetes client's CA copy outlives a killed bridge
        tmp = self.log_path.with_name(self.log_path.name + ".tmp")
        tmp.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *self.args],
            env={**self.env, "TMPDIR": str(tmp), **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"the bridge did not become healthy; log:\n{self.log_path.read_text()[-4000:]}")

    @property
    def health_port(self) -> int:
        return int(self.args[self.args.index("--health-bind") + 1].rsplit(":", 1)[1])

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def bridge(cluster, dagster) -> Any:
    log_path = Path(dagster.home) / "bridge.log"
    b = Bridge(
        env={**os.environ, "KUBECONFIG": cluster.kubeconfig},
        log_path=log_path,
        args=["--dagster-url", dagster.url, "--health-bind", f"127.0.0.1:{_free_port()}", "--drift-interval", "2"],
    )
    b.start()
    try:
        yield b
    finally:
        b.stop()
        print(f"bridge log: {log_path}")


def running_bridges(cluster) -> list[Bridge]:
    """Running admin bridges of this session on ``cluster`` (the `bridge` fixture, whichever module
    started it): a module that runs a bridge of its own pauses them, or they would race it for Tasks."""
    import gc

    return [o for o in gc.get_objects() if isinstance(o, Bridge) and o.proc is not None and o.proc.poll() is None
            and o.env.get("KUBECONFIG") == cluster.kubeconfig]
