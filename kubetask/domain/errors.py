"""TaskError: a failure that ends a Task attempt, carrying the condition reason to record
(``kubetask.vocabulary`` lists the reasons).

Messages name objects, keys, paths and URLs (without query strings), never content or secret values:
they end up in the Task's status, in Events and in Dagster's logs.
"""

from __future__ import annotations


class TaskError(Exception):
    """An error a Task's status can show: ``reason`` is a CamelCase condition reason, ``message`` is for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)  # args stay (reason, message), so the error pickles
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"
