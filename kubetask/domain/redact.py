"""Remove Secret values from text the system records (agent log tails, error messages)."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, quote_plus

from kubetask.api import Task, WorkspaceConfig
from kubetask.domain import manifests


class SecretReader(Protocol):
    """What redaction reads: a Secret's decoded ``data`` (None when it does not exist)."""

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None: ...


MASK = "[redacted]"
LOG_TAIL_MAX_BYTES = 64 * 1024
KEPT_LOG_MAX_BYTES = 1024 * 1024
"""At most this much of an attempt's agent log is kept in Dagster after its pod is gone."""
"""The most of an agent's log the run worker reads for its tail (Kubernetes' ``limitBytes``)."""
_MIN_LENGTH = 4  # shorter values would mask ordinary words


@dataclass(frozen=True)
class Redactor:
    """Replaces each known secret value, and each long line of a multi-line value, with a mask."""

    secrets: frozenset[str]

    @classmethod
    def of(cls, values: Iterable[str]) -> Redactor:
        """Masks for each value, its long lines, the base64 of the value (as `base64` prints it) and its
        URL-encoded forms (as a query string or a form carries it)."""
        needles: set[str] = set()
        for value in values:
            if len(value) >= _MIN_LENGTH:
                needles.add(value)
                needles.update(line for line in value.splitlines() if len(line.strip()) >= 8)
                needles.update({quote(value, safe=""), quote_plus(value)})
                for raw in {value, value.strip()}:
                    encoded = base64.b64encode(raw.encode()).decode()
                    needles.add(encoded)
                    needles.update(encoded[i : i + 76] for i in range(0, len(encoded), 76) if len(encoded) > 76)
        return cls(frozenset(needles))

    @classmethod
    def for_task(cls, kube: SecretReader, task: Task, workspace: WorkspaceConfig) -> Redactor:
        """Every Secret value the Task's agent can see: its context Secret and its credentials."""
        ns, name = task.metadata.namespace or "", task.metadata.name or ""
        values: list[str] = list((kube.secret_data(ns, manifests.secret_name(name)) or {}).values())
        for cred in workspace.spec.credentials or []:
            data = kube.secret_data(ns, cred.secret_ref.name) or {}
            if cred.secret_ref.key is None:  # the whole Secret (envFrom, a directory, its only key)
                values += data.values()
            elif cred.secret_ref.key in data:
                values.append(data[cred.secret_ref.key])
        return cls.of(values)

    def redact(self, text: str) -> str:
        for needle in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(needle, MASK)
        return text


def complete_lines(text: str, max_bytes: int) -> str:
    """``text`` without its last line when a read of at most ``max_bytes`` may have cut it, so that no
    part of a secret value is left for redaction to miss."""
    if len(text.encode()) < max_bytes:
        return text
    kept, newline, _ = text.rpartition("\n")
    return kept + newline


def last_lines(text: str, lines: int, max_bytes: int) -> str:
    """The last ``lines`` lines of ``text``, at most ``max_bytes`` of them (whole lines only)."""
    tail = "".join(text.splitlines(keepends=True)[-lines:]) if lines > 0 else ""
    while len(tail.encode()) > max_bytes and "\n" in tail[:-1]:
        tail = tail.split("\n", 1)[1]
    return tail if len(tail.encode()) <= max_bytes else ""
