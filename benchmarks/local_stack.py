"""The local stack for benchmarks: a control plane, Dagster and the bridge of their own, stopped at exit."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes
from postgres import postgres_server, server_pid, sqlalchemy_url

ROOT = Path(__file__).resolve().parents[1]
STORAGES = ("sqlite", "postgres")


def _exports(text: str) -> dict[str, str]:
    return dict(shlex.split(line)[1].split("=", 1) for line in text.splitlines() if line.startswith("export "))


@dataclass
class Stack:
    kubeconfig: str
    kubectl: list[str]
    env: dict[str, str]
    run_root: Path
    dagster_url: str | None = None
    storage: str = "sqlite"
    postgres_url: str | None = None
    pids: dict[str, int] = field(default_factory=dict)

    def api(self) -> kubernetes.client.ApiClient:
        return kubernetes.config.new_client_from_config(config_file=self.kubeconfig)

    def run(self, *args: str, input: str | None = None) -> str:
        return subprocess.run([*self.kubectl, *args], input=input, text=True, check=True, capture_output=True).stdout


CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


@contextlib.contextmanager
def local_stack(*, dagster: bool = True, bridge_args: tuple[str, ...] = (), storage: str = "sqlite"):
    """Start what a benchmark needs; yield a Stack; stop everything afterwards, even on errors.

    storage: Dagster's storage, "sqlite" (files in DAGSTER_HOME) or "postgres" (a server of the
    benchmark's own in run_root/postgres, started before Dagster and stopped after it)."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, not {storage!r}")
    # `kill <benchmark>` (or a timeout) must stop the cluster, Dagster and the bridge too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with contextlib.ExitStack() as servers:  # exits last: the database outlives everything that uses it
        yield from _local_stack(servers, dagster=dagster, bridge_args=bridge_args, storage=storage)


def _local_stack(servers: contextlib.ExitStack, *, dagster: bool, bridge_args: tuple[str, ...], storage: str):
    run_root = Path(tempfile.mkdtemp(prefix="kubetask-bench-"))
    if not os.environ.get("KUBETASK_BENCH_KEEP"):  # set it to keep a run's logs
        servers.callback(shutil.rmtree, run_root, True)  # registered first, so it runs after the database stopped
    env = {**os.environ, "KUBETASK_CLUSTER_RUN": str(run_root / "cluster")}
    cluster, dagster_script = str(ROOT / "deploy/local/cluster"), str(ROOT / "deploy/local/dagster")
    stops: list[list[str]] = []
    stack_pids: dict[str, int] = {}
    bridge = None
    try:
        stops.append([cluster, "stop"])  # before start: a start that fails half-way stops what it started
        out = _start(cluster, env)
        env["KUBECONFIG"] = kubeconfig = _exports(out)["KUBECONFIG"]
        for name in CONTROL_PLANE:
            pid_file = run_root / "cluster" / f"{name}.pid"
            if pid_file.exists():
                stack_pids[name] = int(pid_file.read_text().split()[0])
        bindir = subprocess.run([cluster, "bindir"], env=env, check=True, capture_output=True, text=True).stdout.strip()
        stack = Stack(kubeconfig, [f"{bindir}/kubectl", f"--kubeconfig={kubeconfig}"], env, run_root, pids=stack_pids)
        stack.run("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "deploy" / "crds" / "bases"))
        stack.run("wait", "--for=condition=Established", "crd", "--all")
        if dagster:
            env["DAGSTER_HOME"] = str(run_root / "dagster")
            Path(env["DAGSTER_HOME"]).mkdir()
            stack.storage = storage
            if storage == "postgres":
                stack.postgres_url = servers.enter_context(postgres_server(run_root))
                env["KUBETASK_DAGSTER_POSTGRES_URL"] = sqlalchemy_url(stack.postgres_url)
            stops.append([dagster_script, "stop"])
            out = _start(dagster_script, env)
            stack.dagster_url = _exports(out)["DAGSTER_URL"]
            for name in ("code-server", "webserver", "daemon"):
                stack.pids[name] = int((run_root / "dagster" / "run" / f"{name}.pid").read_text())
            if storage == "postgres":
                stack.pids["postgres"] = server_pid(run_root)
            bridge = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "crd_bridge",
                    "--dagster-url",
                    stack.dagster_url,
                    "--health-bind",
                    "127.0.0.1:0",
                    *bridge_args,
                ],
                env=env,
                stdout=open(run_root / "bridge.log", "w"),
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
            stack.pids["bridge"] = bridge.pid
            _wait_for_startup_reload(run_root / "bridge.log")
        yield stack
    finally:
        if bridge is not None:
            bridge.terminate()
            bridge.wait(15)
        for cmd in reversed(stops):
            subprocess.run(cmd, env=env, capture_output=True)


def _start(script: str, env: dict[str, str]) -> str:
    """Run `script start`; its exports on success, its own error output in the exception otherwise."""
    done = subprocess.run([script, "start"], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{script} start failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


def _wait_for_startup_reload(log: Path, timeout: float = 60.0) -> None:
    """Wait until the bridge has reloaded the code location once, as it does at start-up (runs launched
    meanwhile wait for the reloaded location): the benchmarks measure a settled stack, not a bridge's
    first seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "reloaded code location" in text or "Dagster cannot reload code location" in text:
            return
        time.sleep(0.2)
    print(f"the bridge did not reload the code location within {timeout:.0f} s; measuring anyway", file=sys.stderr)


def process_children() -> dict[int, list[int]]:
    """Every live process's children, by parent pid (procfs); read once per sample and shared."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def _tree(pid: int, children: dict[int, list[int]]) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def tree_memory_bytes(pid: int, children: dict[int, list[int]] | None = None) -> dict[str, int]:
    """RSS and PSS of a process and all its descendants. Run workers forked from one warm process
    share most of their pages: RSS counts those once per worker, PSS splits them among the sharers,
    so PSS is the tree's real footprint."""
    total = {"rss": 0, "pss": 0}
    for current in _tree(pid, children if children is not None else process_children()):
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    total["rss"] += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    total["pss"] += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def tree_cpu_seconds(pid: int, children: dict[int, list[int]] | None = None) -> dict[int, float]:
    """CPU time (user + system) so far of each live process of the tree, by pid."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for current in _tree(pid, children if children is not None else process_children()):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            cpu[current] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return cpu
