"""The agent's result (pure): the text of its termination message in, a validated ``AgentResult`` or the
reason it was refused out. A bad result never fails the Task: its outcome follows the exit code."""

from __future__ import annotations

import json
from dataclasses import dataclass

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
