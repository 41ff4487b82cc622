"""Structured logs of the run workers: every line a step logs while it works on a Task names the Task
and, once known, its attempt.

Dagster's instance setting ``python_logs.dagster_handler_config`` attaches a handler to every run's
log manager; with ``RunWorkerJsonFormatter`` (deploy/dagster/values.yaml) each ``context.log`` line,
and each of Dagster's own events, becomes one JSON object with the run id, job and step (Dagster's
metadata) and the ``task`` and ``attempt`` bound here. A BatchRun's steps are threads of one process:
the binding is a context variable, so each thread's lines name its own Task."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from kubetask.logformat import JsonFormatter

_TASK: ContextVar[dict[str, Any] | None] = ContextVar("kubetask_task", default=None)


@contextmanager
def task_logging(namespace: str, name: str) -> Iterator[None]:
    """Name the Task ``namespace/name`` on every line logged in this thread until the block ends."""
    token = _TASK.set({"task": f"{namespace}/{name}"})
    try:
        yield
    finally:
        _TASK.reset(token)


def bind_attempt(attempt: int) -> None:
    """Add the attempt to the lines of the Task bound by the enclosing ``task_logging``."""
    bound = _TASK.get()
    if bound is not None:
        bound["attempt"] = attempt


def bound() -> dict[str, Any]:
    """What ``task_logging`` and ``bind_attempt`` bound in this thread (empty outside a Task)."""
    return dict(_TASK.get() or {})


class RunWorkerJsonFormatter(JsonFormatter):
    """``JsonFormatter`` with the Task and attempt the logging step works on."""

    def context(self) -> dict[str, Any]:
        return bound()
