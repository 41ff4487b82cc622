"""Attacks a hostile tenant can write into a Task, each refused with nothing lost, each in its own namespace.

RemoteFile is fetched by the run worker, inside the platform: a URL naming an internal address would
turn it into a reader of whatever that address serves (an SSRF). The stack allows exactly one server
(remote_files, one ip:port); the victims here are servers this module starts on 127.0.0.1, reached by
IP, by ``localhost``, by the decimal and IPv4-mapped forms and through a redirect from the allowed
server, and Dagster's own webserver. Each Task ends Failed with RemoteFileRefused, the victim sees no
request, and the Task gets no ConfigMap and no Job. (Link-local, private and metadata addresses are
proven refused by tests/unit/core/test_addresses.py and test_http_fetcher.py, which open no socket.)
"""

from __future__ import annotations

import http.server
import threading
from urllib.parse import urlsplit

import pytest
from kt_helpers import apply, condition, event_reasons, get, jobs, task, wait_phase, workspace

pytestmark = pytest.mark.integration


class _Victim(http.server.BaseHTTPRequestHandler):
    hits: list[str]

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.hits.append(self.path)
        body = b"internal secret"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def victim():
    """An internal service on 127.0.0.1 that no Task may read; ``.hits`` lists what reached it."""
    handler = type("Victim", (_Victim,), {"hits": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.hits = handler.hits  # type: ignore[attr-defined]
    yield server
    server.shutdown()


def _url(form: str, port: int, remote_files, namespace: str) -> str:
    if form == "redirect":
        return remote_files.redirect(f"/{namespace}/moved", f"http://127.0.0.1:{port}/secret")
    host = {"ip": "127.0.0.1", "localhost": "localhost", "decimal": "2130706433", "ipv4-mapped": "[::ffff:127.0.0.1]"}[form]
    return f"http://{host}:{port}/secret"


def _attack(kubectl, wait_for, namespace, url: str) -> dict:
    ctx = {"type": "RemoteFile", "remoteFile": {"filePath": "/workspace/loot.md", "url": url}}
    apply(kubectl, namespace, workspace(), task("ssrf", [ctx]))
    return wait_phase(kubectl, wait_for, namespace, "ssrf", {"Completed", "Failed"}, timeout=120)


def _assert_refused(kubectl, wait_for, namespace, obj: dict) -> None:
    assert obj["status"]["phase"] == "Failed", obj["status"]
    ready = condition(obj, "Ready")
    assert ready["reason"] == "RemoteFileRefused", obj["status"]
    assert "refused" in ready["message"] and "127.0.0.1" in ready["message"], ready
    assert get(kubectl, namespace, "configmap", "ssrf-context") is None
    assert jobs(kubectl, namespace) == []
    wait_for(lambda: "RemoteFileRefused" in event_reasons(kubectl, namespace, "ssrf"), timeout=30, what="the Event")


@pytest.mark.parametrize("form", ["ip", "localhost", "decimal", "ipv4-mapped", "redirect"])
def test_remote_file_cannot_read_an_internal_service(form, kubectl, wait_for, namespace, bridge, remote_files, victim):
    before = len(victim.hits)
    obj = _attack(kubectl, wait_for, namespace, _url(form, victim.server_address[1], remote_files, namespace))
    _assert_refused(kubectl, wait_for, namespace, obj)
    assert len(victim.hits) == before, victim.hits
    if form == "redirect":  # the allowed hop was fetched; the refused one never was
        assert len(remote_files.requests_to(f"/{namespace}/moved")) == 1


def test_remote_file_cannot_query_dagsters_graphql(kubectl, wait_for, namespace, bridge, dagster):
    """GraphQL over GET would hand the tenant Dagster's runs, their tags and their logs."""
    port = urlsplit(dagster.url).port
    obj = _attack(kubectl, wait_for, namespace, f"http://127.0.0.1:{port}/graphql?query=%7BrunsOrError%7B__typename%7D%7D")
    _assert_refused(kubectl, wait_for, namespace, obj)
