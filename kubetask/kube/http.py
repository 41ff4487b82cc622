"""The HTTP edge of context resolution: ``ContextReader.fetch`` for RemoteFile contexts over ``requests``."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from kubetask.domain.addresses import AddressPolicy
from kubetask.domain.contexts import MAX_REDIRECTS, display_url, remote_file_unavailable
from kubetask.domain.errors import TaskError
from kubetask.vocabulary import REMOTE_FILE_REFUSED

Resolver = Callable[[str, int], list[str]]
"""The addresses a host name resolves to (for ``port``)."""
Connector = Callable[[tuple[str, int], float | None], socket.socket]
"""A connected TCP socket to one address."""


def system_resolver(host: str, port: int) -> list[str]:
    return list(dict.fromkeys(str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))


def tcp_connector(address: tuple[str, int], timeout: float | None) -> socket.socket:
    return socket.create_connection(address, timeout)


class AddressRefused(Exception):
    """The policy refused every address of a hop; raised through requests untouched (not an OSError)."""


class _Guard:
    """Resolve, check every address with the policy, connect to a checked one: no second lookup."""

    def __init__(self, policy: AddressPolicy, resolver: Resolver, connector: Connector) -> None:
        self.policy, self.resolver, self.connector = policy, resolver, connector

    def connect(self, host: str, port: int, timeout: float | None) -> socket.socket:
        refusal = self.policy.name_refusal(host)
        if refusal:
            raise AddressRefused(refusal)
        addresses = self.resolver(host, port)
        refusals = [r for r in (self.policy.refusal(host, a, port) for a in addresses) if r]
        if refusals or not addresses:  # one refused address refuses the name: it may answer with it next time
            raise AddressRefused(refusals[0] if refusals else f"{host} resolves to no address")
        last: OSError | None = None
        for address in addresses:
            try:
                return self.connector((address, port), timeout)
            except OSError as exc:
                last = exc
        assert last is not None
        raise last


def _guarded_pools(guard: _Guard) -> dict[str, type]:
    def connection(base: type[HTTPConnection]) -> type[HTTPConnection]:
        class Guarded(base):  # type: ignore[valid-type, misc]
            def _new_conn(self) -> socket.socket:
                timeout = self.timeout if isinstance(self.timeout, int | float) else None
                return guard.connect(self._dns_host, self.port, timeout)

        return Guarded

    class Http(HTTPConnectionPool):
        ConnectionCls = connection(HTTPConnection)

    class Https(HTTPSConnectionPool):
        ConnectionCls = connection(HTTPSConnection)  # type: ignore[assignment]

    return {"http": Http, "https": Https}


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, guard: _Guard) -> None:
        self._guard = guard
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _guarded_pools(self._guard)


class HttpFetcher:
    """``ContextReader.fetch`` over ``requests``: streamed, capped at ``max_bytes``, bounded by ``timeout``.

    Every connection, of the first request and of each redirect hop, goes to an address the
    ``AddressPolicy`` accepted, found by ``resolver`` and dialled by ``connector`` (both injectable, so
    tests prove refusals without opening a socket); a refusal is ``TaskError(RemoteFileRefused)``.

    ``timeout`` bounds each socket operation and the whole download (checked after every read, so the
    total can overrun by at most one ``timeout``). Needs urllib3 >= 2.3 (``read1``). Redirects are followed
    (at most 5); the request headers are dropped when a redirect leaves the URL's origin. Error
    messages name the URL without its query string and never a header value.
    """

    def __init__(
        self,
        policy: AddressPolicy | None = None,
        *,
        resolver: Resolver = system_resolver,
        connector: Connector = tcp_connector,
    ) -> None:
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy or .netrc from the run worker's environment
        adapter = _GuardedAdapter(_Guard(policy or AddressPolicy(), resolver, connector))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def fetch(self, url: str, headers: dict[str, str], timeout: float, max_bytes: int) -> str:
        shown = display_url(url)
        deadline = time.monotonic() + timeout
        try:
            for _ in range(MAX_REDIRECTS + 1):
                with self._session.get(
                    url, headers=headers, timeout=timeout, stream=True, allow_redirects=False
                ) as response:
                    if response.is_redirect:
                        target = urljoin(url, response.headers["location"])
                        if _origin(target) != _origin(url):
                            headers = {}
                        url = target
                        continue
                    if response.status_code >= 400:
                        raise remote_file_unavailable(shown, f"returned HTTP {response.status_code}")
                    return _decode(_read_capped(response, shown, max_bytes, deadline, timeout), response, shown)
            raise remote_file_unavailable(shown, f"redirected more than {MAX_REDIRECTS} times")
        except AddressRefused as refused:
            raise TaskError(
                REMOTE_FILE_REFUSED, f"GET {shown} refused: {refused} (RemoteFile fetches only public addresses)"
            ) from None
        except requests.Timeout:
            raise remote_file_unavailable(shown, f"timed out after {timeout:g}s") from None
        except requests.RequestException as exc:  # str(exc) may contain the query string: show the type only
            raise remote_file_unavailable(shown, f"failed ({type(exc).__name__})") from None


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def _read_capped(response: requests.Response, shown: str, max_bytes: int, deadline: float, timeout: float) -> bytes:
    too_large = remote_file_unavailable(shown, f"returned more than {max_bytes} bytes")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    # read1 returns whatever arrived, so a server trickling bytes cannot hold us past the deadline.
    while chunk := response.raw.read1(65536, decode_content=True):
        body += chunk
        if len(body) > max_bytes:
            raise too_large
        if time.monotonic() > deadline:
            raise remote_file_unavailable(shown, f"timed out after {timeout:g}s")
    return bytes(body)


def _decode(body: bytes, response: requests.Response, shown: str) -> str:
    match = re.search(r"charset=[\"']?([-\w.:]+)", response.headers.get("content-type", ""), re.IGNORECASE)
    charset = match.group(1) if match else "utf-8"
    try:
        return body.decode(charset)
    except (LookupError, UnicodeDecodeError):
        raise remote_file_unavailable(shown, f"returned content that is not {charset} text") from None
