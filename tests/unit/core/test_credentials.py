"""Credentials bound to their Secrets: the only key of an env-only credential, refused when ambiguous."""

import pytest

from kubetask.api import WorkspaceConfigSpec
from kubetask.domain.credentials import bind_keys
from kubetask.domain.errors import TaskError
from kubetask.vocabulary import CREDENTIAL_KEY_AMBIGUOUS, CREDENTIAL_NOT_FOUND

NS = "team-a"


def credentials(*items):
    return WorkspaceConfigSpec.model_validate({"credentials": list(items)}).credentials


class Keys:
    """Secret key names by Secret name; records every read."""

    def __init__(self, **secrets):
        self.secrets = secrets
        self.reads = []

    def __call__(self, name):
        self.reads.append(name)
        return self.secrets.get(name)


def test_the_design_documents_credential_takes_the_secrets_only_key():
    keys = Keys(**{"github-token": ["token"]})
    [bound] = bind_keys(credentials({"secretRef": {"name": "github-token"}, "env": {"name": "GITHUB_TOKEN"}}), NS, keys)
    assert (bound.env, bound.secret_ref.name, bound.secret_ref.key) == ("GITHUB_TOKEN", "github-token", "token")
    assert bound.display_name == "github-token"


def test_several_keys_fail_naming_the_secret_and_its_keys():
    keys = Keys(**{"github-token": ["username", "password"]})
    with pytest.raises(TaskError) as raised:
        bind_keys(credentials({"secretRef": {"name": "github-token"}, "env": "GITHUB_TOKEN"}), NS, keys)
    assert raised.value.reason == CREDENTIAL_KEY_AMBIGUOUS
    assert raised.value.message == (
        'credential "github-token" (env GITHUB_TOKEN): Secret "github-token" holds 2 keys (password, username), '
        "so secretRef.key must name one"
    )


def test_an_empty_or_missing_secret_fails():
    with pytest.raises(TaskError) as raised:
        bind_keys(credentials({"name": "gh", "secretRef": {"name": "empty"}, "env": "T"}), NS, Keys(empty=[]))
    assert raised.value.reason == CREDENTIAL_KEY_AMBIGUOUS and "holds 0 keys (none)" in raised.value.message
    with pytest.raises(TaskError) as raised:
        bind_keys(credentials({"secretRef": {"name": "gone"}, "env": "T"}), NS, Keys())
    assert raised.value.reason == CREDENTIAL_NOT_FOUND
    assert raised.value.message == 'credential "gone" (env T): Secret "gone" not found in namespace "team-a"'


def test_only_env_credentials_without_a_key_read_their_secret_and_each_secret_once():
    keys = Keys(shared=["v"])
    given = credentials(
        {"secretRef": {"name": "named", "key": "k"}, "env": "A"},
        {"secretRef": {"name": "dir"}, "mountPath": "/etc/dir"},
        {"secretRef": {"name": "all"}},
        {"secretRef": {"name": "shared"}, "env": "B"},
        {"secretRef": {"name": "shared"}, "env": "C"},
    )
    bound = bind_keys(given, NS, keys)
    assert keys.reads == ["shared"]
    assert bound[:3] == given[:3]
    assert [(c.env, c.secret_ref.key) for c in bound[3:]] == [("B", "v"), ("C", "v")]


def test_env_and_directory_split_into_the_env_var_and_the_directory():
    [as_env, as_dir] = bind_keys(
        credentials({"secretRef": {"name": "s"}, "env": "TOKEN", "mountPath": "/etc/s", "fileMode": 0o400}), NS, Keys(s=["k"])
    )
    assert (as_env.env, as_env.secret_ref.key, as_env.mount_path) == ("TOKEN", "k", None)
    assert (as_dir.env, as_dir.secret_ref.key, as_dir.mount_path, as_dir.file_mode) == (None, None, "/etc/s", 0o400)
