"""kubetask.domain.ratelimits and the RateLimited status: a provider's rate limit is a wait, not an attempt."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kubetask.api import WorkspaceConfigSpec
from kubetask.api.result import AgentResult
from kubetask.domain import ratelimits, status

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("exit_code", "until", "expected"),
    [
        (75, "2026-12-02T12:05:00Z", datetime(2026, 12, 2, 12, 5, tzinfo=UTC)),
        (75, "2026-12-02T13:05:00+01:00", datetime(2026, 12, 2, 12, 5, tzinfo=UTC)),
        (1, "2026-12-02T12:05:00Z", None),  # any other exit is an ordinary failure
        (75, None, None),
        (75, "soon", None),
        (75, "2026-12-02T12:05:00", None),  # no zone: which noon?
    ],
)
def test_the_reset_is_known_only_for_exit_75_with_a_zoned_time(exit_code, until, expected):
    assert ratelimits.reset_of(exit_code, AgentResult(rate_limited_until=until)) == expected
    assert ratelimits.reset_of(exit_code, None) is None


def test_a_wait_beyond_max_rate_limit_wait_is_exceeded():
    spec = WorkspaceConfigSpec(agent_image="a", max_rate_limit_wait="10m")
    assert ratelimits.max_wait(spec) == timedelta(minutes=10)
    assert ratelimits.max_wait(WorkspaceConfigSpec(agent_image="a")) == timedelta(hours=1)
    near = ratelimits.wait_for(NOW + timedelta(minutes=5), NOW, timedelta(minutes=10))
    assert (near.seconds, near.exceeded) == (300.0, False)
    far = ratelimits.wait_for(NOW + timedelta(minutes=11), NOW, timedelta(minutes=10))
    assert far.exceeded
    past = ratelimits.wait_for(NOW - timedelta(minutes=1), NOW, timedelta(minutes=10))
    assert (past.seconds, past.exceeded) == (1.0, False)  # a reset already past: start again at once


def test_a_workspace_holds_its_tasks_only_until_the_reset():
    assert ratelimits.held_until(NOW + timedelta(seconds=30), NOW) == NOW + timedelta(seconds=30)
    assert ratelimits.held_until(NOW - timedelta(seconds=1), NOW) is None
    assert ratelimits.held_until(None, NOW) is None


def test_a_wait_is_queued_and_counts_the_waits_of_its_run_only():
    until = NOW + timedelta(minutes=5)
    first = status.waiting({"phase": "Running", "dagsterRunId": "old", "waits": 4}, reason="RateLimited",
                           until=until, message="m", run_id="r1", now=NOW)
    assert first["phase"] == "Queued" and first["waitingUntil"] == "2026-12-02T12:05:00Z"
    assert first["waits"] == 1 and first["dagsterRunId"] == "r1"  # waits of an older run do not count
    ready = next(c for c in first["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "RateLimited"
    second = status.waiting(first, reason="RateLimited", until=until, message="m", run_id="r1", now=NOW)
    assert second["waits"] == 2
    assert status.waits(second, "r1") == 2 and status.waits(second, "r2") == 0
    running = status.running(second, job_name="t-job-2", attempt=2, now=NOW)
    assert running["waitingUntil"] is None


def test_a_start_quota_is_a_sliding_window():
    window = timedelta(minutes=1)
    at = [NOW - timedelta(seconds=s) for s in (70, 50, 20, 5)]  # the first one has left the window
    assert ratelimits.quota_frees_at(at, NOW, 4, window) is None
    # three starts in the window and a quota of three: the next start waits for the oldest of them (50 s ago)
    assert ratelimits.quota_frees_at(at, NOW, 3, window) == NOW + timedelta(seconds=10)
    assert ratelimits.quota_frees_at(at, NOW, 1, window) == NOW + timedelta(seconds=55)
    assert ratelimits.quota_frees_at([], NOW, 1, window) is None


def test_a_workspace_budget_counts_the_current_period_only():
    period = timedelta(hours=24)
    assert ratelimits.period_start(NOW, period) == datetime(2026, 12, 2, tzinfo=UTC)
    spend = ratelimits.add_spend(None, {"inputTokens": 100, "costUSD": 0.4}, NOW, period)
    assert spend == {"periodStart": "2026-12-02T00:00:00Z", "inputTokens": 100, "outputTokens": 0, "costUSD": 0.4}
    spend = ratelimits.add_spend(spend, {"outputTokens": 5, "costUSD": 0.2}, NOW, period)
    assert (spend["outputTokens"], spend["costUSD"]) == (5, 0.6)
    budget = {"maxCostUSD": 0.5, "period": "24h"}
    next_day = datetime(2026, 12, 3, tzinfo=UTC)
    until, why = ratelimits.budget_frees_at(budget, spend, NOW, period)
    assert until == next_day and "cost $0.6 of $0.5" in why
    assert ratelimits.budget_frees_at(budget, spend, next_day + timedelta(minutes=1), period) is None  # a new period
    assert ratelimits.add_spend(spend, {"costUSD": 0.1}, next_day, period)["costUSD"] == 0.1  # starts from nothing
    assert ratelimits.budget_frees_at(budget, None, NOW, period) is None
