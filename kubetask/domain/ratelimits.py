"""Waiting before a start (pure): for a provider's rate limit (when an agent stopped on one, when its
Task starts again, whether that is too far away), for a WorkspaceConfig's start quota and for its
budget per period.

An agent that exits with ``RATE_LIMITED_EXIT_CODE`` (75, sysexits' EX_TEMPFAIL) and a
``rateLimitedUntil`` in its result has not used up an attempt. Its Task waits until that time, and so
does every Task of its WorkspaceConfig (they share the credential that is limited), unless the reset
is further away than the WorkspaceConfig's ``maxRateLimitWait``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubetask.api import WorkspaceConfigSpec, parse_duration
from kubetask.api.result import AgentResult
from kubetask.domain import results, status

RATE_LIMITED_EXIT_CODE = 75
DEFAULT_MAX_RATE_LIMIT_WAIT = "1h"


def reset_of(exit_code: int | None, result: AgentResult | None) -> datetime | None:
    """When the provider's limit resets, if the agent stopped on one (exit 75 and a valid, zoned
    ``rateLimitedUntil``); None otherwise: the attempt failed like any other."""
    if exit_code != RATE_LIMITED_EXIT_CODE or result is None or not result.rate_limited_until:
        return None
    return parse_time(result.rate_limited_until)


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time in UTC; None when it is missing, malformed or has no zone."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo is not None else None


def max_wait_text(spec: WorkspaceConfigSpec) -> str:
    """``maxRateLimitWait`` as written, or the default."""
    return spec.max_rate_limit_wait or DEFAULT_MAX_RATE_LIMIT_WAIT


def max_wait(spec: WorkspaceConfigSpec) -> timedelta:
    return parse_duration(max_wait_text(spec))


def held_until(rate_limited_until: datetime | None, now: datetime) -> datetime | None:
    """The reset a WorkspaceConfig's Tasks wait for (its ``status.rateLimitedUntil``), while it is in the future."""
    return rate_limited_until if rate_limited_until is not None and rate_limited_until > now else None


@dataclass(frozen=True)
class Wait:
    """What to do about a rate limit that resets at ``until``: wait ``seconds``, or give up (``exceeded``)."""

    until: datetime
    seconds: float
    exceeded: bool


def wait_for(until: datetime, now: datetime, limit: timedelta) -> Wait:
    """Wait until ``until`` (at least a second), unless that is more than ``limit`` from ``now``."""
    seconds = max((until - now).total_seconds(), 1.0)
    return Wait(until, seconds, exceeded=until - now > limit)


def quota_frees_at(starts: list[datetime], now: datetime, max_starts: int, window: timedelta) -> datetime | None:
    """When a WorkspaceConfig whose agent Jobs started at ``starts`` may start one more under its quota of
    ``max_starts`` per sliding ``window``: None when it may now, else the time the oldest counted start
    leaves the window."""
    recent = sorted(t for t in starts if t > now - window)
    if len(recent) < max_starts:
        return None
    return recent[len(recent) - max_starts] + window


def period_start(now: datetime, period: timedelta) -> datetime:
    """The start of the budget period ``now`` falls in: periods are counted from the Unix epoch, in UTC."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((now - epoch) // period) * period


def add_spend(
    spend: Mapping[str, Any] | None, usage: Mapping[str, Any], now: datetime, period: timedelta
) -> dict[str, Any]:
    """A WorkspaceConfig's ``status.spend`` with ``usage`` (an agent result's) added, in the current
    period (what an earlier period spent is left behind)."""
    start = period_start(now, period)
    current = spend if spend and parse_time(spend.get("periodStart")) == start else None
    return {"periodStart": status.rfc3339(start), **results.add_usage(current, usage)}


def budget_frees_at(
    budget: Mapping[str, Any], spend: Mapping[str, Any] | None, now: datetime, period: timedelta
) -> tuple[datetime, str] | None:
    """When the next period starts, and why it is awaited, if ``spend`` has used up ``budget`` in the
    current period; None while it has not (or it is an earlier period's)."""
    start = period_start(now, period)
    if not spend or parse_time(spend.get("periodStart")) != start:
        return None
    spent = results.budget_spent(budget, spend)
    return (start + period, spent) if spent else None
