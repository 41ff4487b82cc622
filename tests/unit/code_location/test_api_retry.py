"""The run's Kubernetes client rides out an API server that is restarting: refused connections, 429
and 503 are retried with backoff; answers that mean something (404, 409) are not."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes.client.rest import ApiException

from kubetask.kube.config import api_retry_policy
from kubetask_dagster.kube import Kube, LogUnavailable

TASK = {"apiVersion": "kubetask.io/v1alpha1", "kind": "Task", "metadata": {"name": "t", "namespace": "ns", "uid": "u"}}


class ScriptedApiServer:
    """Answers each request with the next (status, body) of a script; records the requests."""

    def __init__(self, script: list[tuple[int, dict | str]], port: int = 0):
        self.script = list(script)
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.requests.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                code, body = outer.script.pop(0) if outer.script else (500, {})
                payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()  # a str: a log
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if code == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PATCH = do_POST = do_DELETE = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def kube_for(url: str, tmp_path) -> Kube:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": url}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
    }))
    return Kube(kubeconfig=str(kubeconfig))


@pytest.fixture
def fast_backoff(monkeypatch):
    """The same policy with sleeps of 0.05 s to 0.4 s (~3.5 s in all), so tests do not wait out real backoff."""
    import kubetask.kube.config as kube_module

    def fast():
        return api_retry_policy().new(backoff_factor=0.05, backoff_max=0.4)

    monkeypatch.setattr(kube_module, "api_retry_policy", fast)


def test_a_read_through_429_and_503_answers_once_the_server_is_back(tmp_path, fast_backoff):
    server = ScriptedApiServer([(429, {"message": "storage is (re)initializing"}), (503, {}), (200, TASK)])
    try:
        assert kube_for(server.url, tmp_path).get_custom("tasks", "ns", "t")["metadata"]["uid"] == "u"
        assert len(server.requests) == 3
    finally:
        server.close()


def test_a_status_patch_is_retried_too(tmp_path, fast_backoff):
    server = ScriptedApiServer([(503, {}), (200, TASK)])
    try:
        assert kube_for(server.url, tmp_path).patch_status("tasks", "ns", "t", {"phase": "Running"}) is not None
        assert [verb for verb, _ in server.requests] == ["PATCH", "PATCH"]
    finally:
        server.close()


def test_meaningful_answers_are_not_retried(tmp_path, fast_backoff):
    server = ScriptedApiServer([(404, {}), (409, {"reason": "Conflict"})])
    try:
        kube = kube_for(server.url, tmp_path)
        assert kube.get_custom("tasks", "ns", "gone") is None
        with pytest.raises(ApiException) as conflict:
            kube.patch_status("tasks", "ns", "t", {"phase": "Running"})
        assert conflict.value.status == 409
        assert len(server.requests) == 2
    finally:
        server.close()


def test_a_refused_connection_is_retried_until_the_server_listens(tmp_path, fast_backoff):
    with socket.socket() as probe:  # a free port nobody listens on yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kube = kube_for(f"http://127.0.0.1:{port}", tmp_path)
    answer: dict = {}

    def read() -> None:
        try:
            answer["task"] = kube.get_custom("tasks", "ns", "t")
        except Exception as e:  # noqa: BLE001 - the assertion below reports it
            answer["error"] = e

    reader = threading.Thread(target=read)
    reader.start()
    threading.Event().wait(0.5)  # the first attempts are refused
    server = ScriptedApiServer([(200, TASK)], port=port)
    try:
        reader.join(timeout=10)
        assert answer.get("task", {}).get("metadata", {}).get("uid") == "u", answer
    finally:
        server.close()


def test_the_custom_object_verbs_answer_none_or_false_for_409_and_404(tmp_path, fast_backoff):
    created = {**TASK, "metadata": {**TASK["metadata"], "name": "new"}}
    server = ScriptedApiServer([(201, created), (409, {"reason": "AlreadyExists"}), (200, {"items": [TASK]}),
                                (404, {}), (200, {}), (404, {})])
    try:
        kube = kube_for(server.url, tmp_path)
        assert kube.create_custom("tasks", "ns", created)["metadata"]["name"] == "new"
        assert kube.create_custom("tasks", "ns", created) is None  # exists: the caller decides to adopt
        assert kube.list_custom("tasks", "ns", "kubetask.io/batch-run=b") == [TASK]
        assert kube.patch_custom("batchruns", "ns", "gone", {"metadata": {"annotations": {}}}) is None
        assert kube.delete_custom("batchruns", "ns", "old") is True
        assert kube.delete_custom("batchruns", "ns", "gone") is False
        methods = [m for m, _ in server.requests]
        assert methods == ["POST", "POST", "GET", "PATCH", "DELETE", "DELETE"]
        assert "labelSelector=kubetask.io%2Fbatch-run%3Db" in server.requests[2][1]
    finally:
        server.close()


def test_the_log_tail_is_read_with_a_byte_limit(tmp_path):
    server = ScriptedApiServer([(200, {})])
    try:
        kube_for(server.url, tmp_path).pod_log_tail("ns", "p", lines=50)
    finally:
        server.close()
    [(method, path)] = server.requests
    assert method == "GET" and path.startswith("/api/v1/namespaces/ns/pods/p/log?")
    assert "tailLines=50" in path and "limitBytes=65536" in path and "container=agent" in path


def test_the_whole_log_is_read_from_its_start_with_a_byte_limit_and_a_refusal_is_unavailable(tmp_path):
    server = ScriptedApiServer([(200, {}), (400, {"kind": "Status", "code": 400, "message": "no kubelet"})])
    try:
        kube = kube_for(server.url, tmp_path)
        kube.pod_log("ns", "p")
        with pytest.raises(LogUnavailable, match="400"):
            kube.pod_log("ns", "p")
    finally:
        server.close()
    method, path = server.requests[0]
    assert method == "GET" and path.startswith("/api/v1/namespaces/ns/pods/p/log?")
    assert "limitBytes=1048576" in path and "container=agent" in path and "tailLines" not in path


def test_a_log_is_read_as_its_text_not_as_the_clients_repr_of_bytes(tmp_path):
    # kubernetes-client 36 turns a text/plain body into str(bytes): "b'line one\\nline two\\n'"
    log = "line one\nline two: caf\u00e9\n"
    server = ScriptedApiServer([(200, log), (200, log)])
    try:
        kube = kube_for(server.url, tmp_path)
        assert kube.pod_log("ns", "p") == log
        assert kube.pod_log_tail("ns", "p", lines=50) == log
    finally:
        server.close()
