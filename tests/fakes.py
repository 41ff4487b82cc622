"""Fakes shared by the unit tests and the benchmarks (never imported by production code)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kubetask.domain.contexts import display_url, remote_file_unavailable


@dataclass
class StaticReader:
    """An in-memory ``ContextReader`` for tests; records every read and fetch.

    ``config_maps`` and ``secrets`` are keyed by ``(namespace, name)``; ``urls`` maps a URL to its body.
    """

    config_maps: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    reads: list[tuple[str, str, str]] = field(default_factory=list)
    fetches: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        self.reads.append(("configMap", namespace, name))
        return self.config_maps.get((namespace, name))

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        self.reads.append(("secret", namespace, name))
        return self.secrets.get((namespace, name))

    def fetch(self, url: str, headers: dict[str, str], timeout: float, max_bytes: int) -> str:
        self.fetches.append((url, dict(headers)))
        if url not in self.urls:
            raise remote_file_unavailable(display_url(url), "returned HTTP 404")
        body = self.urls[url]
        if len(body.encode()) > max_bytes:
            raise remote_file_unavailable(display_url(url), f"returned more than {max_bytes} bytes")
        return body
