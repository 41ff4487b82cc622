"""Whether kubetask is enabled in a namespace: may the run worker create Jobs there?

Run workers hold their rights per namespace (deploy/tenant binds them where a namespace opts in). A
Task in a namespace that did not opt in would fail deep in its run with a 403 that the run worker
cannot even write on the Task. So the bridge asks the API server first, with a SubjectAccessReview for
the run worker's user, and fails such a Task or BatchRun at once with ``NamespaceNotEnabled``.

The review is a courtesy, not the fence: RBAC refuses the run worker either way. A review that
cannot be answered therefore lets the object through, and its run meets the RBAC.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .kube import KubeApi

log = logging.getLogger(__name__)

TTL = 30.0
"""Seconds an answer is reused: a namespace enabled a moment ago is seen within this time."""


def service_account_groups(user: str) -> tuple[str, ...]:
    """The groups the API server gives a ServiceAccount's token (``system:serviceaccount:<ns>:<name>``)."""
    parts = user.split(":")
    if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
        return ("system:serviceaccounts", f"system:serviceaccounts:{parts[2]}", "system:authenticated")
    return ("system:authenticated",)


def not_enabled_message(namespace: str, user: str, kind: str) -> str:
    return (
        f'kubetask is not enabled in namespace "{namespace}": its run worker ({user}) may not create Jobs here. '
        f"An operator enables the namespace with `kubectl apply -k deploy/tenant -n {namespace}`; "
        f"then create the {kind} again."
    )


class TenantGate:
    """Answers, per namespace, whether the run worker ``user`` may work there (None: do not ask)."""

    def __init__(self, kube: KubeApi, user: str | None, *, clock: Callable[[], float] = time.monotonic):
        self.kube = kube
        self.user = user
        self.clock = clock
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[bool, float]] = {}  # namespace -> (enabled, when asked)

    def refusal(self, namespace: str, kind: str) -> str | None:
        """Why a ``kind`` in ``namespace`` cannot run, or None when it can (or nobody can tell)."""
        if not self.user:
            return None
        now = self.clock()
        with self._lock:
            cached = self._answers.get(namespace)
        if cached is not None and now - cached[1] < TTL:
            enabled = cached[0]
        else:
            try:
                enabled = self.kube.may(
                    self.user, service_account_groups(self.user), "create", "batch", "jobs", namespace
                )
            except Exception as e:  # noqa: BLE001 - see the module docstring: RBAC is the fence
                log.warning("cannot tell whether kubetask is enabled in namespace %s: %s", namespace, e)
                return None
            with self._lock:
                self._answers[namespace] = (enabled, now)
        return None if enabled else not_enabled_message(namespace, self.user, kind)
