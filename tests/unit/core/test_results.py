"""kubetask.domain.results: the agent's result document, validated; a bad one is a reason, never a crash."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from kubetask.api.result import Budget
from kubetask.domain import status
from kubetask.domain.results import budget_spent, parse, totals

GOOD = {
    "summary": "Bumped the dependencies; tests pass.",
    "pullRequests": [{"url": "https://github.com/org/repo/pull/7", "branch": "deps", "commit": "abc123"}],
    "usage": {"inputTokens": 1200, "outputTokens": 340, "costUSD": 0.0421, "model": "claude-sonnet"},
    "outputs": {"changed": "3"},
    "rateLimitedUntil": "2026-12-02T10:00:00Z",
}


def test_a_valid_result_is_kept_with_its_wire_names():
    parsed = parse(json.dumps(GOOD))
    assert parsed.problem is None and parsed.result is not None
    assert parsed.result.to_k8s() == GOOD
    assert parsed.result.usage is not None and parsed.result.usage.cost_usd == 0.0421


def test_no_result_is_neither_a_result_nor_a_problem():
    for text in (None, "", "  \n"):
        assert parse(text).result is None and parse(text).problem is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "the result is not JSON"),
        ("[1, 2]", "must be a JSON object, not list"),
        (json.dumps({"pullRequests": [{"url": "ftp://x"}]}), "invalid at pullRequests.0.url"),
        (json.dumps({"usage": {"inputTokens": -1}}), "invalid at usage.inputTokens"),
        (json.dumps({"summary": "x" * 5000}), "over the 4096 a result may have"),
    ],
)
def test_a_bad_result_is_refused_with_a_reason(text, problem):
    parsed = parse(text)
    assert parsed.result is None and parsed.problem is not None and problem in parsed.problem


def test_the_status_carries_the_result_or_says_why_not():
    recorded = status.result_recorded({}, parse(json.dumps(GOOD)), 1)
    assert recorded["result"] == GOOD
    [condition] = recorded["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == ("Result", "True", "ResultRecorded")
    refused = status.result_recorded({"result": GOOD}, parse("{oops"), 1)
    assert refused["result"] is None  # a merge patch's null: the last attempt's result is not left behind
    [condition] = refused["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "InvalidResult")
    assert status.result_recorded({}, parse(None), 1) == {}


def test_totals_sum_the_usage_and_count_the_pull_requests():
    reported = [
        GOOD,
        {"usage": {"inputTokens": 10, "costUSD": 0.1}, "pullRequests": [{"url": "https://x/1"}, {"url": "https://x/2"}]},
        {"summary": "no usage"},
        None,
    ]
    summed = totals({"result": r} if r else None for r in reported)
    assert summed["pullRequests"] == len(GOOD["pullRequests"]) + 2
    assert summed["usage"] == {
        "inputTokens": GOOD["usage"]["inputTokens"] + 10,
        "outputTokens": GOOD["usage"]["outputTokens"],
        "costUSD": round(GOOD["usage"]["costUSD"] + 0.1, 6),
        "tasks": 2,
    }
    assert totals([]) == {"usage": {"inputTokens": 0, "outputTokens": 0, "costUSD": 0.0, "tasks": 0}, "pullRequests": 0}
    # a sum of cents does not drift in the status
    assert totals([{"result": {"usage": {"costUSD": 0.1}}}] * 3)["usage"]["costUSD"] == 0.3


def test_a_tasks_usage_sums_every_attempt_once_and_the_totals_count_it():
    first = status.result_recorded({}, parse(json.dumps({"usage": {"inputTokens": 100, "costUSD": 0.25}})), 1)
    assert first["usage"] == {"inputTokens": 100, "outputTokens": 0, "costUSD": 0.25, "throughAttempt": 1}
    current = {"usage": first["usage"], "result": first["result"]}
    second = status.result_recorded(current, parse(json.dumps({"usage": {"inputTokens": 50, "costUSD": 0.5}})), 2)
    assert second["usage"] == {"inputTokens": 150, "outputTokens": 0, "costUSD": 0.75, "throughAttempt": 2}
    assert second["result"]["usage"]["costUSD"] == 0.5  # the result is the last attempt's
    # the same attempt written again (a step retried after a crash) adds nothing
    again = status.result_recorded({**current, "usage": second["usage"]}, parse(json.dumps({"usage": {"costUSD": 0.5}})), 2)
    assert "usage" not in again
    # a retried Task counts once, with both attempts; a Task without status.usage counts its result
    summed = totals([{"usage": second["usage"], "result": second["result"]}, {"result": {"usage": {"costUSD": 0.1}}}])
    assert summed["usage"] == {"inputTokens": 150, "outputTokens": 0, "costUSD": 0.85, "tasks": 2}


@pytest.mark.parametrize(
    ("budget", "usage", "spent"),
    [
        (None, {"costUSD": 99.0}, None),
        ({"maxCostUSD": 1.0}, {"costUSD": 0.99}, None),
        ({"maxCostUSD": 1.0}, {"costUSD": 1.0}, "cost $1 of $1"),
        ({"maxTokens": 100}, {"inputTokens": 60, "outputTokens": 39}, None),
        ({"maxTokens": 100}, {"inputTokens": 60, "outputTokens": 40}, "100 tokens of 100"),
        ({"maxCostUSD": 5.0, "maxTokens": 100}, {"inputTokens": 200, "costUSD": 1.0}, "200 tokens of 100"),
    ],
)
def test_a_budget_is_spent_once_a_total_reaches_a_cap(budget, usage, spent):
    found = budget_spent(budget, usage)
    assert (found is None) == (spent is None)
    if spent:
        assert spent in found


def test_a_budget_names_at_least_one_cap():
    with pytest.raises(ValidationError, match="maxCostUSD, maxTokens or both"):
        Budget.model_validate({})
    assert Budget.model_validate({"maxCostUSD": 2}).to_k8s() == {"maxCostUSD": 2.0}
