"""Context resolution and aggregation: the original KubeTask's behaviour, plus RemoteFile and Git.

``resolve`` turns the contexts of a Task (WorkspaceConfig defaults first) into ordered ``Part``\\ s,
reading ConfigMaps, Secrets and URLs through a ``ContextReader`` (the only I/O edge). Git contexts
are passed through, and Repository contexts become Git contexts on the WorkspaceConfig's Git host
(``repository_checkout``): an init container clones them. ``aggregate`` groups the parts per ``filePath``
into ``ContextFile``\\ s in the original's format and gives each a ConfigMap key (``file_keys``).

A part is sensitive when its content came from a Secret, or from a URL fetched with a header taken
from a Secret; a file is sensitive when any of its parts is. Sensitive files go to a Secret, never to
a ConfigMap (see ``manifests``). ``ContextFile.describe()`` is the form that may be logged.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

from kubetask.api import (
    Context,
    ContextType,
    FileSource,
    GitContext,
    RemoteFileContext,
    RepositoryContext,
    RepositorySettings,
    Task,
    WorkspaceConfigSpec,
)
from kubetask.domain.errors import TaskError
from kubetask.vocabulary import (
    CONTEXT_KEY_CONFLICT,
    CONTEXT_REF_NOT_FOUND,
    REMOTE_FILE_REFUSED,
    REMOTE_FILE_UNAVAILABLE,
)

SourceKind = Literal["inline", "configMap", "secret", "remote"]

MAX_KEY_LENGTH = 253
MAX_REDIRECTS = 5
WRAPPER = '<context index="{index}">\n{content}\n</context>'
SEPARATOR = "\n\n"


# --- the I/O edge ------------------------------------------------------------------------------


class ContextReader(Protocol):
    """What ``resolve`` needs from the outside world; the Kubernetes adapter implements it."""

    def config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """``data`` of a ConfigMap, or None when it does not exist."""

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """``data`` of a Secret, base64-decoded, or None when it does not exist."""

    def fetch(self, url: str, headers: dict[str, str], timeout: float, max_bytes: int) -> str:
        """The body of ``url`` as text; raises ``TaskError(RemoteFileUnavailable)`` on any failure."""


def display_url(url: str) -> str:
    """The URL as it may be shown: no user info, query string or fragment (they may carry tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def remote_file_unavailable(shown_url: str, what: str) -> TaskError:
    """The error of a RemoteFile that could not be fetched (``shown_url`` without its query string)."""
    return TaskError(REMOTE_FILE_UNAVAILABLE, f"GET {shown_url} {what}")


# --- resolution --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceInfo:
    """Where a part came from, safe to log: kind, reference, sensitivity, hash and size (never content).

    A sensitive part has no hash: a plain hash of a short token is as good as the token to anyone who
    can guess candidates, and Dagster's metadata is readable by every tenant's users."""

    kind: SourceKind
    ref: str
    sensitive: bool
    sha256: str | None
    size: int

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ref": self.ref,
            "sensitive": self.sensitive,
            "sha256": self.sha256,
            "size": self.size,
        }


@dataclass(frozen=True)
class Part:
    """The resolved content of one File or RemoteFile context; empty when an optional ref was missing."""

    file_path: str
    content: str = field(repr=False)
    source: SourceInfo


@dataclass(frozen=True)
class Resolution:
    """Resolved parts in context order, and the Git contexts left for the init containers."""

    parts: list[Part]
    git: list[GitContext]
    remote_seconds: float = 0.0
    """Time the RemoteFile fetches took: the Task's timeout is shortened by it."""


def all_contexts(task: Task, workspace: WorkspaceConfigSpec) -> list[Context]:
    """The contexts of a Task in the original's order: the WorkspaceConfig's defaults, then the Task's own."""
    return [*(workspace.default_contexts or []), *task.spec.contexts]


def repository_checkout(repository: RepositoryContext, settings: RepositorySettings | None) -> GitContext:
    """The Git context a Repository context stands for: ``<baseURL>/<org>/<repo>.git`` at ``branch``,
    cloned with the WorkspaceConfig's clone Secret into ``path`` (default ``/workspace/<repo>``)."""
    settings = settings or RepositorySettings()
    return GitContext(
        repository=settings.clone_url(repository.org, repository.repo),
        ref=repository.branch,
        path=repository.checkout_path,
        secret_ref=settings.secret_ref,
    )


def resolve(
    contexts: Sequence[Context],
    namespace: str,
    reader: ContextReader,
    *,
    repositories: RepositorySettings | None = None,
    remote_timeout: float = 10.0,
    remote_max_bytes: int = 1_048_576,
    clock: Callable[[], float] = time.monotonic,
    secret_header_hosts: Sequence[str] | None = None,
) -> Resolution:
    """Resolve every File and RemoteFile context; read only ``namespace``, each object at most once.

    ``remote_timeout`` seconds and ``remote_max_bytes`` bytes are the budget of all the Task's RemoteFile
    fetches together: many small files cannot add up to more than one big one. A header taken from a
    Secret goes only to ``secret_header_hosts`` when it is set (``TaskError(RemoteFileRefused)``).

    Git and Repository contexts (the latter on the Git host ``repositories`` names) become checkouts.

    Raises ``TaskError(ContextRefNotFound)`` for a missing non-optional ConfigMap/Secret or key (and
    for any missing Secret behind a RemoteFile header), ``TaskError(RemoteFileUnavailable)`` when a
    URL cannot be fetched.
    """
    objects = _ObjectCache(namespace, reader)
    parts: list[Part] = []
    git: list[GitContext] = []
    started, fetched, remote_seconds = clock(), 0, 0.0
    for index, context in enumerate(contexts):
        where = f"context #{index} ({context.type.value} {context.file_path})"
        if context.type is ContextType.GIT:
            assert context.git is not None
            git.append(context.git)
        elif context.type is ContextType.REPOSITORY:
            assert context.repository is not None
            git.append(repository_checkout(context.repository, repositories))
        elif context.type is ContextType.FILE:
            assert context.file is not None
            parts.append(_resolve_file(context.file.file_path, context.file.source, objects, where))
        else:
            assert context.remote_file is not None
            seconds, size = remote_timeout - (clock() - started), remote_max_bytes - fetched
            if seconds <= 0 or size <= 0:
                spent = f"{remote_max_bytes} bytes" if size <= 0 else f"{remote_timeout:g} s"
                raise TaskError(
                    REMOTE_FILE_UNAVAILABLE,
                    f"{where}: not fetched, the Task's RemoteFiles already used their budget of {spent}",
                )
            part = _resolve_remote(context.remote_file, objects, reader, where, seconds, size, secret_header_hosts)
            fetched += part.source.size
            parts.append(part)
            remote_seconds = clock() - started
    return Resolution(parts=parts, git=git, remote_seconds=remote_seconds)


def _resolve_file(file_path: str, source: FileSource, objects: _ObjectCache, where: str) -> Part:
    if source.inline is not None:
        return _part(file_path, source.inline, "inline", "inline", False)
    kind: SourceKind = "configMap" if source.config_map_key_ref is not None else "secret"
    ref = source.config_map_key_ref or source.secret_key_ref
    assert ref is not None
    content = objects.value(kind, ref.name, ref.key, optional=bool(ref.optional), where=where)
    return _part(file_path, content or "", kind, f"{kind.lower()}/{ref.name}/{ref.key}", kind == "secret")


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """Whether ``host`` is one of ``patterns`` (a name, or ``*.name`` for every host below it)."""
    host = host.rstrip(".").lower()
    return any(host.endswith(p[1:]) if p.startswith("*.") else host == p for p in patterns)


def _resolve_remote(
    remote: RemoteFileContext,
    objects: _ObjectCache,
    reader: ContextReader,
    where: str,
    timeout: float,
    max_bytes: int,
    secret_header_hosts: Sequence[str] | None,
) -> Part:
    headers: dict[str, str] = {}
    sensitive = False
    host = urlsplit(remote.url).hostname or ""
    for header in remote.headers or []:
        if header.value_from is None:
            headers[header.name] = header.value or ""
            continue
        ref = header.value_from.secret_key_ref
        if secret_header_hosts is not None and not host_allowed(host, secret_header_hosts):
            raise TaskError(
                REMOTE_FILE_REFUSED,
                f'{where}: header "{header.name}" comes from Secret "{ref.name}" and goes only to the hosts of the '
                f"WorkspaceConfig's secretHeaderHosts; {host} is not one of them",
            )
        value = objects.value("secret", ref.name, ref.key, optional=False, where=f'{where}, header "{header.name}"')
        assert value is not None
        headers[header.name] = value.strip()  # a Secret made from a file usually ends with a newline
        sensitive = True
    try:
        content = reader.fetch(remote.url, headers, timeout, max_bytes)
    except TaskError as exc:
        raise TaskError(exc.reason, f"{where}: {exc.message}") from None
    return _part(remote.file_path, content, "remote", display_url(remote.url), sensitive)


def _part(file_path: str, content: str, kind: SourceKind, ref: str, sensitive: bool) -> Part:
    data = content.encode()
    digest = None if sensitive else hashlib.sha256(data).hexdigest()
    return Part(file_path, content, SourceInfo(kind, ref, sensitive, digest, len(data)))


class _ObjectCache:
    """Reads each ConfigMap or Secret of one namespace at most once."""

    def __init__(self, namespace: str, reader: ContextReader) -> None:
        self._namespace = namespace
        self._reader = reader
        self._data: dict[tuple[str, str], dict[str, str] | None] = {}

    def value(self, kind: str, name: str, key: str, *, optional: bool, where: str) -> str | None:
        if (kind, name) not in self._data:
            read = self._reader.config_map_data if kind == "configMap" else self._reader.secret_data
            self._data[kind, name] = read(self._namespace, name)
        data = self._data[kind, name]
        label = "ConfigMap" if kind == "configMap" else "Secret"
        if data is None:
            problem = f'{label} "{name}" not found in namespace "{self._namespace}"'
        elif key not in data:
            problem = f'{label} "{name}" has no key "{key}" in namespace "{self._namespace}"'
        else:
            return data[key]
        if optional:
            return None
        raise TaskError(CONTEXT_REF_NOT_FOUND, f"{where}: {problem}")


# --- aggregation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContextFile:
    """One file for the agent: the aggregated content of every non-empty part with this ``file_path``."""

    file_path: str
    content: str = field(repr=False)
    sensitive: bool
    key: str
    sources: list[SourceInfo]

    def describe(self) -> dict[str, Any]:
        """What may be logged or attached as metadata: path, key, size, hash (none when sensitive), sources
        (no content)."""
        data = self.content.encode()
        return {
            "filePath": self.file_path,
            "key": self.key,
            "sensitive": self.sensitive,
            "size": len(data),
            "sha256": None if self.sensitive else hashlib.sha256(data).hexdigest(),
            "sources": [source.describe() for source in self.sources],
        }


def aggregate(parts: Iterable[Part]) -> list[ContextFile]:
    """Group non-empty parts by file path (first appearance order) in the original's format.

    One part is written verbatim; several are each wrapped as ``<context index="N">\\n…\\n</context>``
    (N counts from 0 within the file) and joined by a blank line, with no trailing newline.
    """
    groups: dict[str, list[Part]] = {}
    for part in parts:
        if part.content:
            groups.setdefault(part.file_path, []).append(part)
    keys = file_keys(groups)
    files = []
    for path, group in groups.items():
        if len(group) == 1:
            content = group[0].content
        else:
            content = SEPARATOR.join(WRAPPER.format(index=i, content=p.content) for i, p in enumerate(group))
        files.append(
            ContextFile(
                file_path=path,
                content=content,
                sensitive=any(p.source.sensitive for p in group),
                key=keys[path],
                sources=[p.source for p in group],
            )
        )
    return files


def file_keys(paths: Iterable[str]) -> dict[str, str]:
    """A distinct, valid ConfigMap/Secret key per path, the original's key whenever possible.

    The original key strips one leading ``/`` and turns ``/`` into ``-``; other characters outside
    ``[-._a-zA-Z0-9]`` become ``_``. Paths whose keys collide (``/a/b-c`` and ``/a-b/c``), and keys
    over 253 characters, get ``-<first 8 hex of sha256(path)>`` appended (after truncation).
    """
    unique = list(dict.fromkeys(paths))
    plain = {path: re.sub(r"[^-._a-zA-Z0-9]", "_", path.removeprefix("/").replace("/", "-")) for path in unique}
    counts = Counter(plain.values())
    keys = {}
    for path, key in plain.items():
        if counts[key] > 1 or len(key) > MAX_KEY_LENGTH:
            digest = hashlib.sha256(path.encode()).hexdigest()[:8]
            key = f"{key[: MAX_KEY_LENGTH - 9]}-{digest}"
        keys[path] = key
    clashes = [key for key, n in Counter(keys.values()).items() if n > 1]
    if clashes:
        clashing = sorted(path for path, key in keys.items() if key in clashes)
        raise TaskError(
            CONTEXT_KEY_CONFLICT, f"context file paths {', '.join(clashing)} map to the same key; rename one"
        )
    return keys
