"""Remove Secret values from text the system records (agent log tails, error messages)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kubetask.domain import manifests

if TYPE_CHECKING:
    from kubetask.api import Task, WorkspaceConfig
    from kubetask_dagster.kube import Kube

MASK = "[redacted]"
_MIN_LENGTH = 4  # shorter values would mask ordinary words


@dataclass(frozen=True)
class Redactor:
    """Replaces each known secret value, and each long line of a multi-line value, with a mask."""

    secrets: frozenset[str]

    @classmethod
    def of(cls, values) -> Redactor:
        needles: set[str] = set()
        for value in values:
            if len(value) >= _MIN_LENGTH:
                needles.add(value)
                needles.update(line for line in value.splitlines() if len(line.strip()) >= 8)
        return cls(frozenset(needles))

    @classmethod
    def for_task(cls, kube: Kube, task: Task, workspace: WorkspaceConfig) -> Redactor:
        """Every Secret value the Task's agent can see: its context Secret and its credentials."""
        ns = task.metadata.namespace
        values: list[str] = list((kube.secret_data(ns, manifests.secret_name(task.metadata.name)) or {}).values())
        for cred in workspace.spec.credentials or []:
            data = kube.secret_data(ns, cred.secret_ref.name) or {}
            if cred.secret_ref.key in data:
                values.append(data[cred.secret_ref.key])
        return cls.of(values)

    def redact(self, text: str) -> str:
        for needle in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(needle, MASK)
        return text
