"""The RemoteFile fetcher (``kubetask.kube.http.HttpFetcher``) against a local server on 127.0.0.1."""

import gzip
import http.server
import threading
import time

import pytest

from kubetask.domain.errors import TaskError
from kubetask.kube.http import HttpFetcher


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
    body = HttpFetcher().fetch(f"{server}/ok", {"Authorization": "Bearer s3cret", "X-Extra": "1"}, 5.0, 1000)
    assert body == "héllo"
    assert seen[0][1]["Authorization"] == "Bearer s3cret" and seen[0][1]["X-Extra"] == "1"
    assert HttpFetcher().fetch(f"{server}/latin1", {}, 5.0, 1000) == "héllo"
    assert HttpFetcher().fetch(f"{server}/gzip", {}, 5.0, 1000) == "unzipped " * 100


def test_fetch_caps_the_decompressed_size(server):
    with pytest.raises(TaskError, match="more than 500 bytes"):
        HttpFetcher().fetch(f"{server}/gzip", {}, 5.0, 500)


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
        HttpFetcher().fetch(f"{server}{path}?token=abc", {"Authorization": "Bearer s3cret"}, timeout, max_bytes)
    assert err.value.reason == "RemoteFileUnavailable"
    assert expected in err.value.message
    assert "s3cret" not in str(err.value) and "abc" not in str(err.value)


def test_fetch_connection_error_shows_no_secrets():
    with pytest.raises(TaskError) as err:
        HttpFetcher().fetch("http://127.0.0.1:1/x?token=abc", {"Authorization": "s3cret"}, 2.0, 10)
    assert err.value.reason == "RemoteFileUnavailable"
    assert err.value.message.startswith("GET http://127.0.0.1:1/x failed (")
    assert "abc" not in str(err.value) and "s3cret" not in str(err.value)


def test_redirects_keep_headers_only_within_the_origin(server, seen):
    assert HttpFetcher().fetch(f"{server}/redirect-same", {"X-Token": "s3cret"}, 5.0, 1000) == "héllo"
    assert seen[-1][0] == "/ok" and seen[-1][1].get("X-Token") == "s3cret"
    assert HttpFetcher().fetch(f"{server}/redirect-other", {"X-Token": "s3cret"}, 5.0, 1000) == "héllo"
    assert seen[-1][0] == "/ok" and "X-Token" not in seen[-1][1]
