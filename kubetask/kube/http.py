"""The HTTP edge of context resolution: ``ContextReader.fetch`` for RemoteFile contexts over ``requests``."""

from __future__ import annotations

import re
import time
from urllib.parse import urljoin, urlsplit

import requests

from kubetask.domain.contexts import MAX_REDIRECTS, display_url, remote_file_unavailable


class HttpFetcher:
    """``ContextReader.fetch`` over ``requests``: streamed, capped at ``max_bytes``, bounded by ``timeout``.

    ``timeout`` bounds each socket operation and the whole download (checked after every read, so the
    total can overrun by at most one ``timeout``). Needs urllib3 >= 2.3 (``read1``). Redirects are followed
    (at most 5); the request headers are dropped when a redirect leaves the URL's origin. Error
    messages name the URL without its query string and never a header value.
    """

    def __init__(self, session: requests.Session | None = None) -> None:
        self._session = session or requests.Session()

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
