"""Listing custom objects page by page, in some namespaces or in all: the one paginated list of both
processes (the bridge's cache re-list and the code location's Batch catalog)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kubetask.api import GROUP, VERSION


def list_custom_objects(
    custom_api: Any,
    plural: str,
    namespaces: Sequence[str] = (),
    *,
    label_selector: str | None = None,
    page_size: int = 500,
    timeout: Any = None,
) -> list[dict[str, Any]]:
    """Every ``plural`` object in ``namespaces`` (all namespaces when empty), following ``continue``
    tokens; ``custom_api`` is a ``CustomObjectsApi``. Raises on API errors."""
    items: list[dict[str, Any]] = []
    scopes: list[str | None] = [*namespaces] or [None]
    for ns in scopes:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": page_size}
            if timeout is not None:
                kwargs["_request_timeout"] = timeout
            if label_selector:
                kwargs["label_selector"] = label_selector
            if token:
                kwargs["_continue"] = token
            if ns is None:
                page = custom_api.list_cluster_custom_object(GROUP, VERSION, plural, **kwargs)
            else:
                page = custom_api.list_namespaced_custom_object(GROUP, VERSION, ns, plural, **kwargs)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                break
    return items
