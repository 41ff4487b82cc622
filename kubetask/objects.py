"""Read-only accessors of raw Kubernetes objects (the dicts the API server and the watch return).

The only place that knows where ``metadata``, ``status`` and ``ownerReferences`` live in a body, like
kopf's ``structs/bodies.py``; everything else asks these functions. Every accessor tolerates missing
sections, so a half-written object never raises here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

Key = tuple[str, str]
"""(namespace, name)."""
Obj = dict[str, Any]


def meta(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("metadata") or {}


def status(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("status") or {}


def spec(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("spec") or {}


def key_of(obj: Mapping[str, Any]) -> Key:
    """(namespace, name); raises KeyError when the object has neither (not a namespaced object)."""
    m = obj["metadata"]
    return m["namespace"], m["name"]


def name_of(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` for logs and messages."""
    m = meta(obj)
    return f"{m.get('namespace')}/{m.get('name')}"


def uid_of(obj: Mapping[str, Any]) -> str:
    return meta(obj).get("uid") or ""


def generation_of(obj: Mapping[str, Any]) -> int:
    return int(meta(obj).get("generation") or 1)


def resource_version_of(obj: Mapping[str, Any] | None) -> int | None:
    """``metadata.resourceVersion`` as a number (None when absent or not a number)."""
    try:
        return int(meta(obj).get("resourceVersion"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def labels_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return meta(obj).get("labels") or {}


def annotations_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return meta(obj).get("annotations") or {}


def being_deleted(obj: Mapping[str, Any]) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def created_at(obj: Mapping[str, Any]) -> float | None:
    """``metadata.creationTimestamp`` as epoch seconds (None when absent or malformed)."""
    text = meta(obj).get("creationTimestamp")
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def fifo_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    """Oldest first, then by name: the order waiting objects are served in."""
    m = meta(obj)
    return m.get("creationTimestamp") or "", m.get("name") or ""


def owner_uids(obj: Mapping[str, Any], kind: str) -> tuple[str, ...]:
    """The uids of the owners of ``kind``."""
    return tuple(o.get("uid") or "" for o in meta(obj).get("ownerReferences") or [] if o.get("kind") == kind)


def phase_of(obj: Mapping[str, Any]) -> str | None:
    return status(obj).get("phase")


def run_id_of(obj: Mapping[str, Any]) -> str | None:
    """``status.dagsterRunId`` (None when empty)."""
    return status(obj).get("dagsterRunId") or None


def condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    """The status condition of ``type_`` (None when absent)."""
    return next((c for c in status(obj).get("conditions") or [] if c.get("type") == type_), None)
