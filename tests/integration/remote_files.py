"""The one HTTP server RemoteFile contexts may reach in the test stack: 127.0.0.1 on a port fixed for
the session, allowed by the stack's KUBETASK_REMOTE_FILE_ALLOW as that single ip:port. Every other
address, 127.0.0.1 on any other port included, is refused as it would be in production.

Tests register what a path answers (``serve``) and read what reached it (``requests_to``).
"""

from __future__ import annotations

import http.server
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    require: dict[str, str] = field(default_factory=dict)
    """Request headers the route needs; without them it answers 403 "denied"."""


class RemoteFiles:
    """A ThreadingHTTPServer on 127.0.0.1 answering registered paths (404 otherwise)."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        files = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                with files._lock:
                    files.seen.append((self.path, dict(self.headers.items())))
                    route = files.routes.get(path)
                if route is None:
                    route = Route(404, b"not found")
                elif any(self.headers.get(k) != v for k, v in route.require.items()):
                    route = Route(403, b"denied")
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        with socket.socket() as s:  # a port kept free: allowed, but nothing listens there
            s.bind(("127.0.0.1", 0))
            self.closed_port = s.getsockname()[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def allow(self) -> str:
        """The stack's KUBETASK_REMOTE_FILE_ALLOW: this server and the closed port, nothing else."""
        return f"127.0.0.1:{self.port},127.0.0.1:{self.closed_port}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes = b"", status: int = 200, **kwargs) -> str:
        """Answer GET ``path`` (query strings ignored) and return its URL."""
        with self._lock:
            self.routes[path] = Route(status, body, **kwargs)
        return self.url(path)

    def redirect(self, path: str, location: str) -> str:
        return self.serve(path, status=302, headers={"Location": location})

    def requests_to(self, path: str) -> list[tuple[str, dict[str, str]]]:
        with self._lock:
            return [(p, h) for p, h in self.seen if p.split("?", 1)[0] == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
