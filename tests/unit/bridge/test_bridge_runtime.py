"""The bridge's settings, health/metrics server and kopf wiring (no cluster, no Dagster)."""

from __future__ import annotations

import urllib.error
import urllib.request

import kubernetes
import pytest

from crd_bridge import metrics, watch
from crd_bridge.config import BridgeConfig, parse_config
from crd_bridge.runtime import Runtime
from crd_bridge.watch import connection_info


def test_defaults():
    cfg = parse_config([], env={})
    assert cfg.namespaces == ()
    assert cfg.dagster_url == cfg.dagster_ui_url == "http://127.0.0.1:3000"
    assert (cfg.location, cfg.repository, cfg.job) == ("kubetask", "__repository__", "task_job")
    assert (cfg.health_host, cfg.health_port) == ("127.0.0.1", 8081)
    assert cfg.drift_interval == 5.0 and cfg.drift_grace == 5.0
    assert cfg.kubeconfig is None
    assert cfg.run_url("abc") == "http://127.0.0.1:3000/runs/abc"


def test_flags_and_environment():
    env = {
        "KUBECONFIG": "/tmp/kc",
        "KUBETASK_BRIDGE_NAMESPACES": "a, b",
        "KUBETASK_BRIDGE_DAGSTER_URL": "http://dagster:3000/graphql",
        "KUBETASK_BRIDGE_DRIFT_INTERVAL": "7.5",
        "KUBETASK_BRIDGE_RUN_WORKER": "system:serviceaccount:dagster:kubetask-run-worker",
    }
    cfg = parse_config([], env=env)
    assert cfg.run_worker == "system:serviceaccount:dagster:kubetask-run-worker"
    assert parse_config([], env={}).run_worker is None
    assert cfg.kubeconfig == "/tmp/kc"
    assert cfg.namespaces == ("a", "b")
    assert cfg.dagster_url == "http://dagster:3000"  # /graphql is added by the client
    assert cfg.drift_interval == 7.5
    cfg = parse_config(
        [
            "-n",
            "x",
            "--namespace",
            "y,z",
            "--dagster-ui-url",
            "https://dagster.example.com/",
            "--health-bind",
            "0.0.0.0:9000",
            "--kubeconfig",
            "/k",
        ],
        env=env,
    )
    assert cfg.namespaces == ("x", "y", "z")  # flags replace the variable
    assert cfg.dagster_ui_url == "https://dagster.example.com"
    assert cfg.run_url("r1") == "https://dagster.example.com/runs/r1"
    assert cfg.health_bind == "0.0.0.0:9000"
    assert cfg.kubeconfig == "/k"


def test_bad_values_are_refused():
    with pytest.raises(SystemExit):
        parse_config(["--health-bind", "nonsense"], env={})
    with pytest.raises(SystemExit):
        parse_config(["--drift-interval", "0"], env={})


def test_health_reflects_heartbeats_and_flags():
    now = [0.0]
    h = metrics.Health(clock=lambda: now[0])
    h.beat("loop", 10)
    h.set("operator", True)
    assert h.live()[0]
    assert not h.ready()[0]  # not watching, not synced yet
    h.set("watching", True)
    h.set("synced", True)
    assert h.ready()[0]
    now[0] = 11
    ok, detail = h.live()
    assert not ok and "loop" in detail
    h.beat("loop", 10)
    h.set("operator", False)
    assert not h.live()[0]


def test_http_server_serves_health_and_metrics():
    h = metrics.Health()
    h.beat("loop", 60)
    server = metrics.serve("127.0.0.1", 0, h)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert urllib.request.urlopen(f"{base}/healthz", timeout=5).status == 200
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/readyz", timeout=5)
        assert e.value.code == 503
        metrics.SUBMISSIONS.inc()
        body = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        for name in (
            "kubetask_bridge_submissions_total",
            "kubetask_bridge_submission_errors_total",
            "kubetask_bridge_reconcile_errors_total",
            "kubetask_bridge_drift_corrections_total",
            "kubetask_bridge_submit_latency_seconds",
            "kubetask_bridge_queued_tasks",
        ):
            assert name in body
    finally:
        server.shutdown()
        server.server_close()


def _configuration() -> kubernetes.client.Configuration:
    c = kubernetes.client.Configuration()
    c.host = "https://127.0.0.1:6443"
    c.api_key = {"BearerToken": "Bearer abc"}
    c.ssl_ca_cert = "/tmp/ca.crt"
    return c


def test_kopf_login_uses_the_bridges_configuration():
    info = connection_info(_configuration())
    assert info.server == "https://127.0.0.1:6443"
    assert (info.scheme, info.token) == ("Bearer", "abc")
    assert info.ca_path == "/tmp/ca.crt"


def test_kopf_registry_has_only_event_handlers():
    """Event handlers only: kopf then stores no diff-base/progress annotations and adds no finalizer."""
    rt = Runtime(BridgeConfig(), _configuration())
    registry = watch.registry(rt)
    assert registry._watching.has_handlers
    ids = {h.id for h in registry._watching.get_all_handlers()}
    assert {"tasks", "workspaceconfigs", "batch-catalog", "batch-status"} <= ids  # the Batch sync's
    assert list(registry._changing.get_all_handlers()) == []
    assert list(registry._spawning.get_all_handlers()) == []
    assert watch.settings().posting.enabled is False
