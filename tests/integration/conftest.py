"""Fixtures for tests against a real local control plane (see deploy/local/cluster).

The session starts its own cluster in a private run directory and stops it at the end, unless
KUBETASK_TEST_KUBECONFIG points at a cluster that is already running (e.g. a dev cluster started
with `deploy/local/cluster start`; its CRDs are then re-applied, nothing is stopped).

The cluster fixture applies deploy/crds/bases/*.yaml. A CRD the apiserver rejects does not fail every test:
it is recorded in cluster.crd_errors, and tests that need the CRDs request the `crds` fixture,
which fails them with the apiserver's message.

Pods never run: kwok moves them through their phases (deploy/local/kwok-stages.yaml). Pod labels and
annotations steer it: `kubetask.io/test-outcome: fail|hang|image-pull-error`, `kubetask.io/test-exit-code`,
`kubetask.io/test-duration-ms`, `kubetask.io/test-succeed-attempt`. A test sets them on its own objects:
a WorkspaceConfig's podLabels (every pod of its Tasks), or, for single Tasks, the `steer` fixture's
kwok Stage, which labels the pods of the Tasks named.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO / "deploy" / "local" / "cluster"
CRDS_DIR = REPO / "deploy" / "crds" / "bases"
CACHE = Path(os.environ.get("KUBETASK_CACHE", Path.home() / ".cache" / "kubetask-dagster"))
INTEGRATION_DIR = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs the real local control plane (and, where noted, Dagster)"
    )


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so `-m "not integration"` sees the marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


def pytest_collection_finish(session: pytest.Session) -> None:
    # A cold build takes far longer than the per-test timeout, which also covers fixture setup;
    # build here, outside any test, when integration tests were selected. Warm, this is a no-op.
    if os.environ.get("KUBETASK_TEST_KUBECONFIG") or session.config.option.collectonly:
        return
    if any(item.get_closest_marker("integration") for item in session.items):
        if subprocess.run([str(CLUSTER_SCRIPT), "build"]).returncode != 0:
            pytest.exit("deploy/local/cluster build failed", returncode=1)


def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.25, what: str = "condition") -> Any:
    """Poll until predicate() returns something truthy and return it."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Cluster:
    kubeconfig: str
    bin_dir: str
    api_client: Any
    run_dir: str | None = None  # None when the session uses an external cluster
    env: dict[str, str] = field(default_factory=dict)
    crds: list[str] = field(default_factory=list)  # names of the installed, Established CRDs
    crd_errors: dict[str, str] = field(default_factory=dict)  # crds/ file name -> apiserver's refusal

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        exe = Path(self.bin_dir) / "kubectl"
        cmd = [str(exe) if exe.exists() else (shutil.which("kubectl") or "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(cmd, input=input, text=True, capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {shlex.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc


def _script_env_paths(env: dict[str, str]) -> tuple[str, str]:
    """(kubeconfig, bin_dir) as printed by `deploy/local/cluster env`."""
    out = subprocess.run([str(CLUSTER_SCRIPT), "env"], env=env, check=True, capture_output=True, text=True).stdout
    values = {}
    for line in out.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            values[key] = value
    return values["KUBECONFIG"], values["PATH"].split(":", 1)[0]


def _install_crds(cluster: Cluster) -> None:
    """Apply crds/*.yaml file by file, then wait for Established; failures go to cluster.crd_errors."""
    names = []
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        proc = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-o", "name", "-f", str(path), check=False)
        if proc.returncode == 0:
            names += proc.stdout.split()
        else:
            cluster.crd_errors[path.name] = proc.stderr.strip() or proc.stdout.strip()
    if names:
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    cluster.crds = [n.split("/", 1)[1] for n in names]
    if cluster.crd_errors:
        warnings.warn(f"the apiserver rejected {', '.join(sorted(cluster.crd_errors))}; "
                      "tests that request the `crds` fixture fail with its reasons", stacklevel=1)


def _prune_old_test_runs(env: dict[str, str]) -> None:
    """Stop clusters of test sessions that died without teardown and drop their run dirs.

    Run dirs of finished sessions stay until the next session, so their logs can be read.
    """
    for run in (CACHE / "run").glob("test-*"):
        pid = run.name.removeprefix("test-")
        if not pid.isdigit() or int(pid) == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        if (run / "started").exists():
            subprocess.run([str(CLUSTER_SCRIPT), "stop"], env={**env, "KUBETASK_CLUSTER_RUN": str(run)},
                           check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(run, ignore_errors=True)


def _start_cluster(env: dict[str, str], attempts: int = 3) -> None:
    """`deploy/local/cluster start`, again on a failure: a component can lose the free port picked
    for it to another process's outgoing connection before it binds (seen once: kwok exiting at start)."""
    for attempt in range(1, attempts + 1):
        if subprocess.run([str(CLUSTER_SCRIPT), "start"], env=env, stdout=subprocess.DEVNULL).returncode == 0:
            return
        print(f"cluster start failed (attempt {attempt} of {attempts})", file=sys.stderr)
    raise RuntimeError(f"deploy/local/cluster start failed {attempts} times; see the component logs above")


@pytest.fixture(scope="session")
def cluster() -> Any:
    """The session's cluster; KUBECONFIG points at it for the whole session.

    The kubernetes client reads $KUBECONFIG once, at import, into KUBE_CONFIG_DEFAULT_LOCATION, so
    that is redirected too: code under test calling load_kube_config() with no path finds this cluster.
    """
    from kubernetes import config as k8s_config
    from kubernetes.config import kube_config

    external = os.environ.get("KUBETASK_TEST_KUBECONFIG")
    env = dict(os.environ)
    run_dir = None
    if not external:
        run_dir = str(CACHE / "run" / f"test-{os.getpid()}")
        env["KUBETASK_CLUSTER_RUN"] = run_dir
    kubeconfig, bin_dir = _script_env_paths(env)
    if external:
        kubeconfig = external

    previous_kubeconfig = os.environ.get("KUBECONFIG")
    previous_default = kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    try:
        if run_dir:
            _prune_old_test_runs(env)
            # stdout is the env text; stderr (progress, or the failing component's log) goes to the terminal.
            _start_cluster(env)
        api_client = k8s_config.new_client_from_config(config_file=kubeconfig)
        c = Cluster(kubeconfig=kubeconfig, bin_dir=bin_dir, api_client=api_client, run_dir=run_dir, env=env)
        os.environ["KUBECONFIG"] = kube_config.KUBE_CONFIG_DEFAULT_LOCATION = kubeconfig
        _install_crds(c)
        yield c
        api_client.close()
    finally:
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = previous_default
        if previous_kubeconfig is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous_kubeconfig
        if run_dir:
            subprocess.run([str(CLUSTER_SCRIPT), "stop"], env=env, check=False, stdout=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> list[str]:
    """Request this in tests that need the project's CRDs: fails them when any crds/*.yaml was rejected."""
    if cluster.crd_errors:
        pytest.fail("the apiserver rejected CRDs:\n" + "\n".join(f"{f}: {e}" for f, e in cluster.crd_errors.items()))
    return cluster.crds


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    """wait_for(predicate, timeout=60, interval=0.25, what="...") -> the first truthy result."""
    return wait_for


@pytest.fixture
def kubectl(cluster: Cluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    """kubectl(*args, input=None, check=True) against the session's cluster."""
    return cluster.kubectl


def _namespace_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower().removeprefix("test_").removeprefix("test-"))
    base = re.sub(r"-+", "-", base).strip("-") or "ns"
    suffix = secrets.token_hex(3)
    base = base[: 63 - len("t--") - len(suffix)].rstrip("-")
    return f"t-{base}-{suffix}"


@pytest.fixture
def steer(cluster: Cluster, namespace: str) -> Any:
    """steer(tasks, labels, attempts=None, annotations=None): kwok labels (and annotates) the agent pods of
    these Tasks of the test's namespace with these steering labels (kt_helpers.steering_stage); the
    Stages go with the test."""
    from kt_helpers import steering_stage

    names: list[str] = []

    def make(tasks: list[str] | None, labels: dict[str, str], attempts: list[int] | None = None,
             annotations: dict[str, str] | None = None) -> str:
        name = f"steer-{namespace}-{len(names)}"
        stage = steering_stage(name, namespace, tasks, labels, attempts, annotations)
        cluster.kubectl("create", "-f", "-", input=json.dumps(stage))
        names.append(name)
        return name

    yield make
    if names:
        cluster.kubectl("delete", "stages.kwok.x-k8s.io", "--ignore-not-found", "--wait=false", *names, check=False)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Any:
    """A fresh namespace with its default ServiceAccount; deleted (not awaited) afterwards."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(cluster.api_client)
    name = _namespace_name(request.node.name)
    core.create_namespace({"metadata": {"name": name, "labels": {"kubetask.io/test": "true"}}})

    def default_sa() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
            return True
        except ApiException as e:
            if e.status != 404:
                raise
            return False

    try:
        wait_for(default_sa, timeout=30, what=f"ServiceAccount default in {name}")
        yield name
    finally:
        try:
            core.delete_namespace(name)
        except ApiException as e:
            if e.status != 404:
                raise


# The whole stack's session fixtures, registered here once: imported into each test module instead,
# pytest would make one Dagster and one bridge per module, all watching the same cluster.
from kt_stack import bridge, dagster, remote_files  # noqa: E402,F401
