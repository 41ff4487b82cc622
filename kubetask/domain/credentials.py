"""WorkspaceConfig credentials bound to their Secrets: the key an env var takes when none is named.

The design document writes ``- secretRef: {name: github-token}`` with ``env: {name: GITHUB_TOKEN}``: a
Secret holding one key gives that key to the env var. Which key that is can only be read from the
Secret, so ``bind_keys`` reads the key names (never the values) through a ``SecretKeys`` callable and
returns the credentials with every env-only ``secretRef.key`` filled in. The Job then references the
key by ``secretKeyRef`` as usual: no value enters the Job spec.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from kubetask.api import Credential
from kubetask.domain.errors import TaskError
from kubetask.vocabulary import CREDENTIAL_KEY_AMBIGUOUS, CREDENTIAL_NOT_FOUND

SecretKeys = Callable[[str], Collection[str] | None]
"""The key names of a Secret of the Task's namespace, or None when it does not exist."""


def bind_keys(credentials: Sequence[Credential], namespace: str, secret_keys: SecretKeys) -> list[Credential]:
    """``credentials`` with the Secret's only key filled in wherever ``env`` is set without ``secretRef.key``.

    A credential that also sets ``mountPath`` is split in two: the env var of that key, and the Secret's
    directory at ``mountPath``.

    Raises ``TaskError(CredentialNotFound)`` when such a Secret does not exist and
    ``TaskError(CredentialKeyAmbiguous)`` when it holds no key or several (their names in the message).
    Each Secret is read at most once."""
    keys: dict[str, Collection[str] | None] = {}
    bound = []
    for credential in credentials:
        ref = credential.secret_ref
        if credential.env is None or ref.key is not None:
            bound.append(credential)
            continue
        if ref.name not in keys:
            keys[ref.name] = secret_keys(ref.name)
        found = keys[ref.name]
        where = f'credential "{credential.display_name}" (env {credential.env})'
        if found is None:
            raise TaskError(CREDENTIAL_NOT_FOUND, f'{where}: Secret "{ref.name}" not found in namespace "{namespace}"')
        if len(found) != 1:
            held = ", ".join(sorted(found)) or "none"
            raise TaskError(
                CREDENTIAL_KEY_AMBIGUOUS,
                f'{where}: Secret "{ref.name}" holds {len(found)} keys ({held}), so secretRef.key must name one',
            )
        (key,) = found
        env_only = {"secret_ref": ref.model_copy(update={"key": key}), "mount_path": None, "file_mode": None}
        bound.append(credential.model_copy(update=env_only))
        if credential.mount_path is not None:  # the Secret's directory stays a directory
            bound.append(credential.model_copy(update={"env": None}))
    return bound
