"""The agent's result (pure): the text of its termination message in, a validated ``AgentResult`` or the
reason it was refused out. A bad result never fails the Task: its outcome follows the exit code."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kubetask.api.result import MAX_RESULT_BYTES, AgentResult

RESULT_FILE = "/dev/termination-log"
"""The agent container's terminationMessagePath, given to the agent as $KUBETASK_RESULT_FILE."""
RESULT_FILE_ENV = "KUBETASK_RESULT_FILE"


@dataclass(frozen=True)
class ParsedResult:
    result: AgentResult | None
    problem: str | None
    """Why the document was refused; None when it was valid or there was none."""


def parse(text: str | None) -> ParsedResult:
    """Validate what the agent wrote (nothing written: no result and no problem)."""
    if not text or not text.strip():
        return ParsedResult(None, None)
    size = len(text.encode())
    if size > MAX_RESULT_BYTES:
        return ParsedResult(None, f"the result is {size} bytes, over the {MAX_RESULT_BYTES} a result may have")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        return ParsedResult(None, f"the result is not JSON: {e.msg} at line {e.lineno} column {e.colno}")
    if not isinstance(document, dict):
        return ParsedResult(None, f"the result must be a JSON object, not {type(document).__name__}")
    try:
        return ParsedResult(AgentResult.model_validate(document), None)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the result"
        return ParsedResult(None, f"the result is invalid at {where}: {first['msg']}")


def add_usage(total: Mapping[str, Any] | None, usage: Mapping[str, Any]) -> dict[str, Any]:
    """``inputTokens``, ``outputTokens`` and ``costUSD`` of ``total`` with those of ``usage`` added."""
    total = total or {}
    return {
        "inputTokens": int(total.get("inputTokens") or 0) + int(usage.get("inputTokens") or 0),
        "outputTokens": int(total.get("outputTokens") or 0) + int(usage.get("outputTokens") or 0),
        # sums of cents in binary floats: keep the status stable
        "costUSD": round(float(total.get("costUSD") or 0.0) + float(usage.get("costUSD") or 0.0), 6),
    }


def totals(statuses: Iterable[Mapping[str, Any] | None]) -> dict[str, Any]:
    """``usage`` (summed tokens and cost of every attempt, and how many Tasks reported usage) and
    ``pullRequests`` (a count, of the last results) of Tasks' statuses, as a BatchRun's status carries them.
    A Task's ``status.usage`` sums its attempts; a status without one counts its ``result``'s usage."""
    summed: dict[str, Any] = add_usage(None, {})
    reporting = pull_requests = 0
    for task_status in statuses:
        if not task_status:
            continue
        result = task_status.get("result") or {}
        pull_requests += len(result.get("pullRequests") or [])
        usage = task_status.get("usage") or result.get("usage")
        if usage:
            reporting += 1
            summed = add_usage(summed, usage)
    return {"usage": {**summed, "tasks": reporting}, "pullRequests": pull_requests}


def budget_spent(budget: Mapping[str, Any] | None, usage: Mapping[str, Any]) -> str | None:
    """Why ``usage`` (as ``totals`` sums it) has used up ``budget`` (a BatchRun's ``spec.budget``), or
    None while it has not. A cap is used up once the total reaches it."""
    if not budget:
        return None
    spent = []
    max_cost, max_tokens = budget.get("maxCostUSD"), budget.get("maxTokens")
    if max_cost is not None and usage.get("costUSD", 0.0) >= max_cost:
        spent.append(f"cost ${usage.get('costUSD', 0.0):g} of ${max_cost:g}")
    tokens = int(usage.get("inputTokens", 0)) + int(usage.get("outputTokens", 0))
    if max_tokens is not None and tokens >= max_tokens:
        spent.append(f"{tokens} tokens of {max_tokens}")
    return f"the budget is spent: {', '.join(spent)}" if spent else None


def describe_usage(usage: Mapping[str, Any] | None) -> str:
    """``usage`` totals in a sentence, for a message."""
    usage = usage or {}
    return (
        f"{usage.get('tasks', 0)} Tasks reported {usage.get('inputTokens', 0)} input and "
        f"{usage.get('outputTokens', 0)} output tokens, ${usage.get('costUSD', 0.0):g}"
    )
