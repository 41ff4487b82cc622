"""The RemoteFile fetcher (``kubetask.kube.http.HttpFetcher``) against a local server on 127.0.0.1."""

import gzip
import http.server
import threading
import time

import pytest

from kubetask.domain.addresses import AddressPolicy
from kubetask.domain.errors import TaskError
from kubetask.kube.http import HttpFetcher

LOOPBACK = AddressPolicy.parse(["127.0.0.1/32", "::1/128"])  # these tests' servers; the default refuses them


class _Handler(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.path.split("?")[0]
        _Handler.seen.append((path, dict(self.headers)))
        if path == "/ok":
            self._send(200, "héllo".encode(), "text/plain; charset=utf-8")
        elif path == "/latin1":
            self._send(200, "héllo".encode("latin-1"), "text/plain; charset=ISO-8859-1")
        elif path == "/binary":
            self._send(200, b"\xff\xfe\xfa", "application/octet-stream")
        elif path == "/big":
            self._send(200, b"x" * 5000, "text/plain")
        elif path == "/big-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"3e8\r\n" + b"y" * 1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/gzip":
            self.send_response(200)
            body = gzip.compress(b"unzipped " * 100)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path == "/slow":
            time.sleep(1.5)
            self._send(200, b"late", "text/plain")
        elif path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "20")
            self.end_headers()
            for _ in range(20):
                self.wfile.write(b"z")
                self.wfile.flush()
                time.sleep(0.1)
        elif path == "/redirect-same":
            self.send_response(302)
            self.send_header("Location", "/ok")
            self.end_headers()
        elif path == "/redirect-to-other-port":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1] + 1}/x")
            self.end_headers()
        elif path == "/redirect-other":
            port = self.server.server_address[1]
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{port}/ok")
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        else:
            self._send(404, b"nope", "text/plain")

    def _send(self, code, body, content_type):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # clients that stop reading early (size cap, deadline) are expected


@pytest.fixture(scope="module")
def server():
    httpd = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def seen():
    _Handler.seen.clear()
    return _Handler.seen


def test_fetch_sends_headers_and_decodes(server, seen):
    body = HttpFetcher(LOOPBACK).fetch(f"{server}/ok", {"Authorization": "Bearer s3cret", "X-Extra": "1"}, 5.0, 1000)
    assert body == "héllo"
    assert seen[0][1]["Authorization"] == "Bearer s3cret" and seen[0][1]["X-Extra"] == "1"
    assert HttpFetcher(LOOPBACK).fetch(f"{server}/latin1", {}, 5.0, 1000) == "héllo"
    assert HttpFetcher(LOOPBACK).fetch(f"{server}/gzip", {}, 5.0, 1000) == "unzipped " * 100


def test_fetch_caps_the_decompressed_size(server):
    with pytest.raises(TaskError, match="more than 500 bytes"):
        HttpFetcher(LOOPBACK).fetch(f"{server}/gzip", {}, 5.0, 500)


@pytest.mark.parametrize(
    ("path", "max_bytes", "timeout", "expected"),
    [
        ("/missing", 1000, 5.0, "returned HTTP 404"),
        ("/big", 1000, 5.0, "returned more than 1000 bytes"),
        ("/big-chunked", 1000, 5.0, "returned more than 1000 bytes"),
        ("/binary", 1000, 5.0, "is not utf-8 text"),
        ("/slow", 1000, 0.3, "timed out after 0.3s"),
        ("/trickle", 1000, 0.5, "timed out after 0.5s"),
        ("/loop", 1000, 5.0, "redirected more than 5 times"),
    ],
)
def test_fetch_failures_are_remote_file_unavailable(server, seen, path, max_bytes, timeout, expected):
    with pytest.raises(TaskError) as err:
        HttpFetcher(LOOPBACK).fetch(f"{server}{path}?token=abc", {"Authorization": "Bearer s3cret"}, timeout, max_bytes)
    assert err.value.reason == "RemoteFileUnavailable"
    assert expected in err.value.message
    assert "s3cret" not in str(err.value) and "abc" not in str(err.value)


def test_fetch_connection_error_shows_no_secrets():
    with pytest.raises(TaskError) as err:
        HttpFetcher(LOOPBACK).fetch("http://127.0.0.1:1/x?token=abc", {"Authorization": "s3cret"}, 2.0, 10)
    assert err.value.reason == "RemoteFileUnavailable"
    assert err.value.message.startswith("GET http://127.0.0.1:1/x failed (")
    assert "abc" not in str(err.value) and "s3cret" not in str(err.value)


def test_redirects_keep_headers_only_within_the_origin(server, seen):
    assert HttpFetcher(LOOPBACK).fetch(f"{server}/redirect-same", {"X-Token": "s3cret"}, 5.0, 1000) == "héllo"
    assert seen[-1][0] == "/ok" and seen[-1][1].get("X-Token") == "s3cret"
    assert HttpFetcher(LOOPBACK).fetch(f"{server}/redirect-other", {"X-Token": "s3cret"}, 5.0, 1000) == "héllo"
    assert seen[-1][0] == "/ok" and "X-Token" not in seen[-1][1]


class Dials:
    """An injected resolver and connector: what would have been resolved and dialled; no socket opens."""

    def __init__(self, answers: dict[str, list[str]]):
        self.answers, self.resolved, self.dialled = answers, [], []

    def resolve(self, host, port):
        self.resolved.append(host)
        return self.answers[host]

    def connect(self, address, timeout):
        self.dialled.append(address)
        raise ConnectionRefusedError("a test connector: nothing is dialled")


@pytest.mark.parametrize(
    "url, answers, refusal",
    [
        ("http://169.254.169.254/latest/meta-data/", {"169.254.169.254": ["169.254.169.254"]}, "169.254.169.254, a link-local"),
        ("http://metadata.google.internal/computeMetadata/v1/", {}, "metadata.google.internal is a cloud metadata service"),
        ("http://internal.example.com/x", {"internal.example.com": ["10.0.0.8"]}, "10.0.0.8, a private address"),
        ("https://gitlab.corp/x", {"gitlab.corp": ["192.168.1.20"]}, "192.168.1.20, a private address"),
        ("http://cgnat.example.com/x", {"cgnat.example.com": ["100.64.3.4"]}, "100.64.3.4, a non-public address"),
        ("http://kubernetes.default.svc/api", {"kubernetes.default.svc": ["10.96.0.1"]}, "10.96.0.1, a private address"),
        ("http://[fd00::1]/x", {"fd00::1": ["fd00::1"]}, "fd00::1, a private address"),
        ("http://[::ffff:127.0.0.1]/x", {"::ffff:127.0.0.1": ["::ffff:127.0.0.1"]}, "127.0.0.1, a loopback address"),
        ("http://2130706433/x", {"2130706433": ["127.0.0.1"]}, "127.0.0.1, a loopback address"),
        ("http://0.0.0.0/x", {"0.0.0.0": ["0.0.0.0"]}, "0.0.0.0, an unspecified address"),
        # one public and one private answer: refused, a second lookup could pick the private one
        ("http://rebind.example.com/x", {"rebind.example.com": ["93.184.216.34", "127.0.0.1"]}, "127.0.0.1, a loopback"),
    ],
)
def test_non_public_addresses_are_refused_before_anything_is_dialled(url, answers, refusal):
    dials = Dials(answers)
    fetcher = HttpFetcher(resolver=dials.resolve, connector=dials.connect)
    with pytest.raises(TaskError) as raised:
        fetcher.fetch(url, {"Authorization": "Bearer s3cret"}, 2.0, 1000)
    assert raised.value.reason == "RemoteFileRefused"
    assert refusal in raised.value.message and "s3cret" not in raised.value.message
    assert dials.dialled == []


def test_a_public_address_is_dialled_as_resolved_and_nothing_else():
    dials = Dials({"example.com": ["93.184.216.34"]})
    fetcher = HttpFetcher(resolver=dials.resolve, connector=dials.connect)
    with pytest.raises(TaskError) as raised:
        fetcher.fetch("https://example.com/file.md", {}, 2.0, 1000)
    assert raised.value.reason == "RemoteFileUnavailable"  # the test connector refuses the connection
    assert dials.dialled == [("93.184.216.34", 443)]


def test_a_redirect_to_a_private_address_is_refused(server):
    # the first hop is this test's own server (allowed by endpoint); its redirect target is not
    port = int(server.rsplit(":", 1)[1])
    policy = AddressPolicy.parse([f"127.0.0.1:{port}"])
    with pytest.raises(TaskError) as raised:
        HttpFetcher(policy).fetch(f"{server}/redirect-to-other-port", {}, 5.0, 1000)
    assert raised.value.reason == "RemoteFileRefused" and "loopback" in raised.value.message
    assert HttpFetcher(policy).fetch(f"{server}/latin1", {}, 5.0, 1000) == "héllo"  # the allowed server itself
