"""Whether an attempt may start now: a provider's rate limit, the WorkspaceConfig's start quota and its
budget per period. An attempt that may not waits as Queued: its step raises a delayed retry, which
Dagster holds without a thread or a slot, and which is counted in ``status.waits``, not as an attempt.

The WorkspaceConfig's status carries what the run workers share: ``rateLimitedUntil``, the quota's
``recentStarts`` and the budget's ``spend``; the last two are written conditionally on the
resourceVersion read, so concurrent run workers neither overwrite each other nor both take a last place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, NoReturn, Protocol

from dagster import Failure, OpExecutionContext, RetryRequested
from kubernetes.client.rest import ApiException

from kubetask import vocabulary
from kubetask.api import WorkspaceConfig, parse_duration
from kubetask.api.result import Usage
from kubetask.domain import ratelimits, status
from kubetask_dagster.kube import Conflict, Kube

log = logging.getLogger(__name__)

CONDITIONAL_WRITE_TRIES = 5  # writes of a WorkspaceConfig's status (quota, spend) that met a change, before giving up


class Reporter(Protocol):
    """Where a wait is written (``TaskReporter``)."""

    @property
    def current(self) -> dict[str, Any]: ...

    def patch(self, patch: dict[str, Any]) -> None: ...

    def event(self, reason: str, message: str, *, warning: bool = False) -> None: ...

    def fail(self, reason: str, message: str, exit_code: int | None = None) -> None: ...


def before_start(context: OpExecutionContext, api: Kube, reporter: Reporter, workspace: WorkspaceConfig) -> None:
    """Wait (raise the step's delayed retry) while the WorkspaceConfig is rate-limited, its budget for
    the period is spent or its start quota used up; else claim a start under the quota."""
    held = ratelimits.held_until(_rate_limited_until(workspace), status.now())
    if held is not None:  # the credential its Tasks share is limited
        wait_for_rate_limit(context, reporter, workspace, held, f'WorkspaceConfig "{_name(workspace)}" is rate-limited')
    _wait_for_budget(context, reporter, workspace)
    _wait_for_quota(context, api, reporter, workspace)


def wait_for_rate_limit(
    context: OpExecutionContext, reporter: Reporter, workspace: WorkspaceConfig, until: datetime, why: str
) -> NoReturn:
    """Queue the Task until ``until``, or fail it when that is further away than ``maxRateLimitWait``."""
    wait = ratelimits.wait_for(until, status.now(), ratelimits.max_wait(workspace.spec))
    if wait.exceeded:
        limit = ratelimits.max_wait_text(workspace.spec)
        message = f"{why} until {status.rfc3339(until)}, more than maxRateLimitWait ({limit}) from now"
        reporter.fail(vocabulary.RATE_LIMIT_WAIT_EXCEEDED, message)
        raise Failure(description=f"{vocabulary.RATE_LIMIT_WAIT_EXCEEDED}: {message}", allow_retries=False)
    message = f"{why} until {status.rfc3339(until)}; the Task starts again then"
    _wait(context, reporter, vocabulary.RATE_LIMITED, until, message, warning=True)


def hold_workspace(context: OpExecutionContext, api: Kube, workspace: WorkspaceConfig, reset: datetime) -> None:
    """Record on the WorkspaceConfig that its credential is limited until ``reset``: its other Tasks wait too."""
    ns, name = _namespace(workspace), _name(workspace)
    current = _rate_limited_until(workspace)
    if current is not None and current >= reset:
        return
    try:
        api.patch_status("workspaceconfigs", ns, name, {"rateLimitedUntil": status.rfc3339(reset)})
    except ApiException as e:  # e.g. a tenant RoleBinding from before workspaceconfigs/status: this Task still waits
        context.log.warning(f"could not record the rate limit on WorkspaceConfig {ns}/{name}: {e.status} {e.reason}")
    api.forget("workspaceconfigs", ns, name=name)  # this process's next Tasks read the hold at once


def record_spend(context: OpExecutionContext, api: Kube, workspace: WorkspaceConfig, usage: Usage) -> None:
    """Add an attempt's reported usage to its WorkspaceConfig's ``status.spend`` (when it has a budget)."""
    budget = workspace.spec.budget
    if budget is None:
        return
    period = parse_duration(budget.period)

    def spend_patch(obj: dict[str, Any]) -> dict[str, Any]:
        spent = (obj.get("status") or {}).get("spend")
        return {"spend": ratelimits.add_spend(spent, usage.to_k8s(), status.now(), period)}

    if not _write_conditionally(api, workspace, spend_patch):
        context.log.warning(f"the spend of WorkspaceConfig {_namespace(workspace)}/{_name(workspace)} is not recorded")
    api.forget("workspaceconfigs", _namespace(workspace), name=_name(workspace))


# --- the waits ----------------------------------------------------------------------------------


def _wait(
    context: OpExecutionContext, reporter: Reporter, reason: str, until: datetime, message: str, warning: bool
) -> NoReturn:
    message += " (waiting does not use up an attempt)"
    reporter.patch(status.waiting(reporter.current, reason=reason, until=until, message=message, run_id=context.run_id))
    reporter.event(reason, message, warning=warning)
    seconds = max((until - status.now()).total_seconds(), 0.2)
    raise RetryRequested(max_retries=context.retry_number + 1, seconds_to_wait=seconds)


def _wait_for_budget(context: OpExecutionContext, reporter: Reporter, workspace: WorkspaceConfig) -> None:
    budget = workspace.spec.budget
    if budget is None:
        return
    spend = workspace.status.spend.to_k8s() if workspace.status and workspace.status.spend else None
    blocked = ratelimits.budget_frees_at(budget.to_k8s(), spend, status.now(), parse_duration(budget.period))
    if blocked is not None:
        next_period, spent = blocked
        message = (
            f'WorkspaceConfig "{_name(workspace)}": {spent} in its {budget.period} period; the Task starts '
            f"in the next, at {status.rfc3339(next_period)}"
        )
        _wait(context, reporter, vocabulary.BUDGET_EXHAUSTED, next_period, message, warning=True)


def _wait_for_quota(context: OpExecutionContext, api: Kube, reporter: Reporter, workspace: WorkspaceConfig) -> None:
    """Claim a start in ``status.recentStarts``; while the quota is used up, wait until the oldest start
    in the window leaves it."""
    quota = workspace.spec.quota
    if quota is None:
        return
    window = parse_duration(quota.window)
    frees_at: datetime | None = None

    def claim(obj: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal frees_at
        now = status.now()
        listed = (obj.get("status") or {}).get("recentStarts") or []
        starts = [t for t in map(ratelimits.parse_time, listed) if t is not None]
        frees_at = ratelimits.quota_frees_at(starts, now, quota.max_task_starts, window)
        if frees_at is not None:
            return None
        kept = sorted(t for t in starts if t > now - window)  # fewer than maxTaskStarts: room for this one
        return {"recentStarts": [t.isoformat().replace("+00:00", "Z") for t in [*kept, now]]}

    if not _write_conditionally(api, workspace, claim):
        frees_at = status.now() + timedelta(seconds=1)  # contended under every try: ask again shortly
    if frees_at is not None:
        message = (
            f'WorkspaceConfig "{_name(workspace)}" allows {quota.max_task_starts} Task starts per {quota.window}; '
            f"the next may start at {status.rfc3339(frees_at)}"
        )
        _wait(context, reporter, vocabulary.QUOTA_EXHAUSTED, frees_at, message, warning=False)


def _write_conditionally(
    api: Kube, workspace: WorkspaceConfig, patch_of: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> bool:
    """Merge ``patch_of(the WorkspaceConfig as read now)`` into its status if it has not changed since
    (read again and retried when it has); None from ``patch_of``: nothing to write. False when every try
    met a change; True otherwise, also when the object is gone or the write is not allowed (logged):
    metering must not stop a Task."""
    ns, name = _namespace(workspace), _name(workspace)
    for _ in range(CONDITIONAL_WRITE_TRIES):
        obj = api.get_custom("workspaceconfigs", ns, name)
        if obj is None:
            return True  # deleted meanwhile: the Task's own checks report it
        patch = patch_of(obj)
        if patch is None:
            return True
        try:
            api.patch_status("workspaceconfigs", ns, name, patch, resource_version=obj["metadata"]["resourceVersion"])
            return True
        except Conflict:
            continue
        except ApiException as e:  # e.g. a tenant RoleBinding from before workspaceconfigs/status
            log.warning("could not write the status of WorkspaceConfig %s/%s: %s %s", ns, name, e.status, e.reason)
            return True
    return False


def _rate_limited_until(workspace: WorkspaceConfig) -> datetime | None:
    return workspace.status.rate_limited_until if workspace.status else None


def _namespace(workspace: WorkspaceConfig) -> str:
    return workspace.metadata.namespace or ""


def _name(workspace: WorkspaceConfig) -> str:
    return workspace.metadata.name or ""
