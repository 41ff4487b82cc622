"""The README's first command, non-interactively, as a newcomer runs it: `./dev up` brings up a stack
of its own, the example BatchRun reaches Completed, `./dev status` tells where things run, and
`./dev down` stops everything."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dev_up_runs_the_example_batchrun_to_completion(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "DAGSTER_HOME")}
    env.update(
        KUBETASK_CLUSTER_RUN=str(tmp_path / "cluster"),
        DAGSTER_HOME=str(tmp_path / "dagster"),
        KUBETASK_LOCAL_DIR=str(tmp_path / "local"),
        KUBETASK_BRIDGE_HEALTH_BIND=f"127.0.0.1:{_free_port()}",
    )
    (tmp_path / "dagster").mkdir()
    started = time.monotonic()
    try:
        up = subprocess.run([str(ROOT / "dev"), "up"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        assert up.returncode == 0, up.stderr[-3000:]
        assert "Dagster UI:  http://127.0.0.1:" in up.stdout
        kubeconfig = str(tmp_path / "cluster" / "kubeconfig")
        bindir = subprocess.run([str(ROOT / "deploy/local/cluster"), "bindir"], env=env, capture_output=True, text=True).stdout.strip()
        kubectl = [f"{bindir}/kubectl", f"--kubeconfig={kubeconfig}"]
        deadline = time.monotonic() + 240
        phase = None
        while time.monotonic() < deadline:
            out = subprocess.run([*kubectl, "get", "batchrun", "update-deps-001", "-o", "json"], capture_output=True, text=True)
            if out.returncode == 0:
                status = json.loads(out.stdout).get("status") or {}
                phase = status.get("phase")
                if phase in ("Completed", "Failed", "Stopped"):
                    break
            time.sleep(1)
        elapsed = time.monotonic() - started
        print(f"./dev up to the example BatchRun {phase}: {elapsed:.1f} s")
        assert phase == "Completed", status
        assert status["progress"]["completed"] == status["progress"]["total"] == 3
        tasks = json.loads(subprocess.run([*kubectl, "get", "tasks", "-o", "json"], capture_output=True, text=True).stdout)["items"]
        assert sorted(t["metadata"]["name"] for t in tasks) == [f"update-deps-001-task-{i}" for i in range(3)]
        status_cmd = subprocess.run([str(ROOT / "dev"), "status"], env=env, cwd=ROOT, capture_output=True, text=True)
        assert status_cmd.returncode == 0 and "bridge: running" in status_cmd.stdout
    finally:
        subprocess.run([str(ROOT / "dev"), "down"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    after = subprocess.run([str(ROOT / "dev"), "status"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert after.returncode != 0 and "bridge: not running" in after.stdout
