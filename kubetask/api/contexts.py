"""Context types: the inputs an agent gets as files (File, RemoteFile) or a checkout (Git, Repository)."""

from __future__ import annotations

import posixpath
import re
from enum import Enum
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from kubetask.api.base import ApiModel, cel, k8s_extra

FILE_PATH_PATTERN = r"^(/[^/]+)+$"
_DOT_SEGMENT_PATTERN = r"(^|/)\.\.?(/|$)"
# The same check in one regular expression without look-ahead: no segment is "." or "..".
NORMALISED_PATH_PATTERN = r"^(/([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+))+$"
# A branch, tag or commit: never an option (``--upload-pack=...``) for the clone script's git.
GIT_REF_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$"
# http(s): no user info (a token in the URL would reach the Job spec, logs and Dagster); ssh: a user is how ssh works.
GIT_URL_PATTERN = r"^(https?://[^/@ ]+(/[^ ]*)?|ssh://[^ ]+|git@[^ ]+)$"
# One path segment of a repository URL (an organisation or a repository): never "." or "..", never an option.
PATH_SEGMENT_PATTERN = r"^([A-Za-z0-9_]|\.[A-Za-z0-9_-]|\.\.[A-Za-z0-9._-])[A-Za-z0-9._-]*$"
REPOSITORY_MOUNT_ROOT = "/workspace"


def _normalised_absolute(path: str) -> str:
    if not re.fullmatch(FILE_PATH_PATTERN, path) or re.search(_DOT_SEGMENT_PATTERN, path):
        raise ValueError(f"{path!r} must be an absolute, normalised path such as /workspace/task.md")
    assert posixpath.normpath(path) == path
    return path


FilePath = Annotated[
    str,
    AfterValidator(_normalised_absolute),
    Field(
        description="Absolute path of the file in the agent container. Contexts with the same "
        "filePath are aggregated into one file.",
        min_length=2,
        max_length=1024,
        json_schema_extra=k8s_extra(
            cel(
                f"self.matches(r'{FILE_PATH_PATTERN}') && !self.matches(r'{_DOT_SEGMENT_PATTERN}')",
                "{field} must be an absolute, normalised path such as /workspace/task.md "
                "(no relative, '.', '..', empty or trailing segments)",
                pattern=NORMALISED_PATH_PATTERN,
            )
        ),
    ),
]


class KeyRef(ApiModel):
    """One key of a ConfigMap or Secret in the Task's namespace."""

    name: str = Field(
        description="Name of the ConfigMap or Secret in the Task's namespace.", min_length=1, max_length=253
    )
    key: str = Field(description="Key within it.", min_length=1, max_length=253)
    optional: bool | None = Field(
        None, description="When true, a missing object or key yields no content instead of an error."
    )


class FileSource(ApiModel):
    """Where a File context's content comes from: exactly one of inline, configMapKeyRef, secretKeyRef."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": k8s_extra(
            cel(
                "(has(self.inline) ? 1 : 0) + (has(self.configMapKeyRef) ? 1 : 0) + (has(self.secretKeyRef) ? 1 : 0) == 1",
                "source must set exactly one of inline, configMapKeyRef, secretKeyRef",
            )
        )
    }

    inline: str | None = Field(None, description="The content itself.", max_length=1048576)
    config_map_key_ref: KeyRef | None = Field(None, description="Content from a ConfigMap key in the Task's namespace.")
    secret_key_ref: KeyRef | None = Field(
        None,
        description="Content from a Secret key in the Task's namespace. The file is mounted from a Secret, never a ConfigMap.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> FileSource:
        if sum(x is not None for x in (self.inline, self.config_map_key_ref, self.secret_key_ref)) != 1:
            raise ValueError("source must set exactly one of inline, configMapKeyRef, secretKeyRef")
        return self


class FileContext(ApiModel):
    """A file mounted into the agent container."""

    file_path: FilePath
    source: FileSource = Field(description="Where the content comes from.")


class SecretKeySelector(ApiModel):
    name: str = Field(description="Secret name in the Task's namespace.", min_length=1, max_length=253)
    key: str = Field(description="Key within the Secret.", min_length=1, max_length=253)


class HeaderValueSource(ApiModel):
    secret_key_ref: SecretKeySelector = Field(description="Read the header value from a Secret key.")


class HttpHeader(ApiModel):
    """An HTTP header sent when fetching a RemoteFile: a literal value or one from a Secret."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": k8s_extra(
            cel("has(self.value) != has(self.valueFrom)", "header must set exactly one of value, valueFrom")
        )
    }

    name: str = Field(
        description="Header name.", min_length=1, max_length=256, pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
    )
    value: str | None = Field(None, description="Literal header value.", max_length=8192)
    value_from: HeaderValueSource | None = Field(None, description="Header value from a Secret key.")

    @model_validator(mode="after")
    def _one_value(self) -> HttpHeader:
        if (self.value is None) == (self.value_from is None):
            raise ValueError("header must set exactly one of value, valueFrom")
        return self


class RemoteFileContext(ApiModel):
    """A file fetched over HTTP(S) each time the Task runs."""

    file_path: FilePath
    url: str = Field(
        description="http:// or https:// URL to fetch.",
        max_length=2048,
        json_schema_extra=k8s_extra(
            cel(
                "self.matches(r'^https?://[^/ ]+')",
                "{field} must be an http:// or https:// URL",
                pattern=r"^https?://[^/ ]+",
            )
        ),
    )
    headers: list[HttpHeader] | None = Field(None, description="Headers sent with the request.", max_length=16)

    @model_validator(mode="after")
    def _http(self) -> RemoteFileContext:
        if not re.match(r"^https?://[^/ ]+", self.url):
            raise ValueError("url must be an http:// or https:// URL")
        return self


def _ref_name(text: str) -> str:
    if not re.fullmatch(GIT_REF_PATTERN, text) or ".." in text:
        raise ValueError(f"{text!r} is not a branch, tag or commit name")
    return text


GitRef = Annotated[
    str,
    AfterValidator(_ref_name),
    Field(
        max_length=256,
        json_schema_extra=k8s_extra(
            cel(
                f"self.matches(r'{GIT_REF_PATTERN}') && !self.contains('..')",
                "{field} must be a branch, tag or commit name (letters, digits, . _ / -, not starting with - or /, no ..)",
                pattern=GIT_REF_PATTERN,
            )
        ),
    ),
]


def _path_segment(text: str) -> str:
    if not re.fullmatch(PATH_SEGMENT_PATTERN, text):
        raise ValueError(f"{text!r} must be one path segment (letters, digits, . _ -; not . or ..; no /)")
    return text


PathSegment = Annotated[
    str,
    AfterValidator(_path_segment),
    Field(
        min_length=1,
        max_length=100,
        json_schema_extra=k8s_extra(
            cel(
                f"self.matches(r'{PATH_SEGMENT_PATTERN}')",
                "{field} must be one path segment (letters, digits, . _ -; not . or .., no /, not starting with -)",
                pattern=PATH_SEGMENT_PATTERN,
            )
        ),
    ),
]


class GitContext(ApiModel):
    """A Git repository cloned into the agent's filesystem by an init container."""

    repository: str = Field(
        description="Repository URL (https://, http://, ssh:// or git@host:path); credentials go in secretRef, "
        "never in the URL.",
        max_length=2048,
        json_schema_extra=k8s_extra(
            cel(
                f"self.matches(r'{GIT_URL_PATTERN}')",
                "{field} must be an https://, http://, ssh:// or git@ URL, with no user or token in an http(s) URL "
                "(use secretRef)",
                pattern=GIT_URL_PATTERN,
            )
        ),
    )
    ref: GitRef | None = Field(None, description="Branch, tag or commit to check out (default: the remote's HEAD).")
    path: FilePath = Field(description="Absolute directory the repository is checked out into.")
    depth: int | None = Field(
        None, description="Shallow-clone depth (default 1; 0 clones the full history).", ge=0, le=1000000
    )
    secret_ref: LocalSecretRef | None = Field(
        None,
        description="Secret with credentials: keys `username` and `password` (HTTPS; a token alone in `password` works), "
        "`ca.crt` (the certificate authority of a private HTTPS host), or `ssh-privatekey` and optionally "
        "`known_hosts` (SSH).",
    )


class LocalSecretRef(ApiModel):
    name: str = Field(description="Secret name in the Task's namespace.", min_length=1, max_length=253)


GitContext.model_rebuild()


class RepositoryContext(ApiModel):
    """A repository of the WorkspaceConfig's Git host, by organisation and name: a Git context on
    ``<repositories.baseURL>/<org>/<repo>.git`` with the WorkspaceConfig's clone credentials."""

    org: PathSegment = Field(description="Organisation, group or user that owns the repository.")
    repo: PathSegment = Field(description="Repository name (without .git).")
    branch: GitRef | None = Field(None, description="Branch, tag or commit to check out (default: the remote's HEAD).")
    path: FilePath | None = Field(
        None, description=f"Absolute directory of the checkout (default `{REPOSITORY_MOUNT_ROOT}/<repo>`)."
    )

    @property
    def checkout_path(self) -> str:
        return self.path or f"{REPOSITORY_MOUNT_ROOT}/{self.repo}"


class ContextType(str, Enum):
    FILE = "File"
    REMOTE_FILE = "RemoteFile"
    GIT = "Git"
    REPOSITORY = "Repository"


_TYPE_MATCHES_BODY = (
    "(self.type == 'File') == has(self.file) && "
    "(self.type == 'RemoteFile') == has(self.remoteFile) && "
    "(self.type == 'Git') == has(self.git) && "
    "(self.type == 'Repository') == has(self.repository)"
)
_TYPE_MATCHES_MESSAGE = (
    "context of type File needs `file`, RemoteFile needs `remoteFile`, Git needs `git`, "
    "Repository needs `repository`, and no other"
)


class Context(ApiModel):
    """One input of a Task: `type` says which of `file`, `remoteFile`, `git`, `repository` is set."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": k8s_extra(cel(_TYPE_MATCHES_BODY, _TYPE_MATCHES_MESSAGE))
    }

    type: ContextType = Field(description="File, RemoteFile, Git or Repository.")
    file: FileContext | None = Field(None, description="A file with inline, ConfigMap or Secret content.")
    remote_file: RemoteFileContext | None = Field(None, description="A file fetched over HTTP(S).")
    git: GitContext | None = Field(None, description="A Git checkout made by an init container.")
    repository: RepositoryContext | None = Field(
        None, description="A checkout of `<org>/<repo>` from the WorkspaceConfig's Git host, made by an init container."
    )

    @model_validator(mode="after")
    def _body_matches_type(self) -> Context:
        bodies = {
            ContextType.FILE: self.file,
            ContextType.REMOTE_FILE: self.remote_file,
            ContextType.GIT: self.git,
            ContextType.REPOSITORY: self.repository,
        }
        if bodies[self.type] is None or sum(b is not None for b in bodies.values()) != 1:
            raise ValueError(_TYPE_MATCHES_MESSAGE)
        return self

    @property
    def file_path(self) -> str:
        """Where this context lands in the agent container."""
        if self.file is not None:
            return self.file.file_path
        if self.remote_file is not None:
            return self.remote_file.file_path
        if self.repository is not None:
            return self.repository.checkout_path
        assert self.git is not None
        return self.git.path


ContextList = Annotated[list[Context], Field(max_length=64)]
VariableContextSet = Annotated[list[Context], Field(max_length=16, description="The contexts of one Task of a batch.")]
