"""The plugin's errors: each one is a single line on stderr and exit code 1, never a traceback."""

from __future__ import annotations

import re
from collections.abc import Sequence


class PluginError(Exception):
    """An error the plugin reports as one line (``error: <message>``) with exit code 1."""


def _kinds(kinds: Sequence[str]) -> str:
    return " or ".join(kinds)


def not_found(kinds: Sequence[str], name: str, namespace: str) -> PluginError:
    """``Task 'x' not found in namespace 'y'`` (``Task or BatchRun 'x' ...`` when both were tried)."""
    return PluginError(f"{_kinds(kinds)} '{name}' not found in namespace '{namespace}'")


def cluster_unreachable(server: str, why: str) -> PluginError:
    """The API server does not answer; names its URL."""
    return PluginError(f"cannot reach the Kubernetes API server at {server}: {why}")


def dagster_unreachable(url: str, why: str) -> PluginError:
    """Dagster's webserver does not answer; names its URL and what to pass instead."""
    return PluginError(f"cannot reach Dagster at {url}: {why} (set --dagster-url or KUBETASK_DAGSTER_URL)")


def no_dagster_url(what: str) -> PluginError:
    """Neither --dagster-url, KUBETASK_DAGSTER_URL nor the object's status.dagsterRunUrl gives Dagster's address."""
    return PluginError(f"no Dagster URL for {what}: pass --dagster-url or set KUBETASK_DAGSTER_URL")


def no_log(name: str, namespace: str, attempt: int, why: str) -> PluginError:
    """Neither the pod nor Dagster has the agent log of this attempt."""
    return PluginError(f"no log of Task '{name}' attempt {attempt} in namespace '{namespace}': {why}")


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^)'\"]+)")


def connection_problem(error: BaseException) -> str:
    """A short reason for a failed connection (``connection refused``, ``timed out``, ``TLS: ...``), from the
    exception urllib3 or requests raised, without its object addresses and retry counts."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = getattr(current, "reason", None) or current.__cause__ or current.__context__
        if not isinstance(current, BaseException):
            current = None
    text = " ".join(f"{type(e).__name__} {e}" for e in seen)
    if "SSL" in text or "certificate" in text.lower():
        match = re.search(r"\[SSL[^\]]*\] ([^()'\"]+)", text)
        return f"TLS: {match.group(1).strip() if match else 'handshake failed'}"
    if "Timeout" in text or "timed out" in text:
        return "timed out"
    match = _ERRNO.search(text)
    if match:
        return match.group(1).strip().lower()
    last = str(seen[-1]) or type(seen[-1]).__name__
    return last.splitlines()[0][:200]
