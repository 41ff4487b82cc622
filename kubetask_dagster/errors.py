"""TaskError: a failure that ends a Task attempt, carrying the condition reason to record.

Messages name objects, keys, paths and URLs (without query strings), never content or secret values:
they end up in the Task's status, in Events and in Dagster's logs.
"""

from __future__ import annotations

CONTEXT_REF_NOT_FOUND = "ContextRefNotFound"
"""A ConfigMap, Secret or key that a context (or a RemoteFile header) refers to does not exist."""

REMOTE_FILE_UNAVAILABLE = "RemoteFileUnavailable"
"""A RemoteFile could not be fetched: connection error, timeout, HTTP status >= 400, too large, not text."""

CONTEXT_TOO_LARGE = "ContextTooLarge"
"""The context files do not fit the 1 MiB limit of a ConfigMap or Secret."""

CONTEXT_KEY_CONFLICT = "ContextKeyConflict"
"""Two context file paths still map to the same ConfigMap key after disambiguation (practically never)."""

MOUNT_PATH_CONFLICT = "MountPathConflict"
"""Two mounts of the agent container (context file, credential, Git checkout, /tools) share a path."""


class TaskError(Exception):
    """An error a Task's status can show: ``reason`` is a CamelCase condition reason, ``message`` is for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)  # args stay (reason, message), so the error pickles
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"
