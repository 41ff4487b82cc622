"""Secret values never reach recorded text: ``Redactor.of``/``redact`` and ``Redactor.for_task``."""

from __future__ import annotations

import base64

from kubetask.api import Task, WorkspaceConfig
from kubetask.domain import manifests
from kubetask.domain.redact import MASK, Redactor, complete_lines
from tests.fakes import StaticReader

NS = "team-a"


def test_a_whole_value_is_masked_everywhere():
    redactor = Redactor.of(["hunter22"])
    assert redactor.redact("login hunter22 failed; retry with hunter22") == f"login {MASK} failed; retry with {MASK}"


def test_text_without_secrets_is_unchanged():
    assert Redactor.of(["hunter22"]).redact("nothing to hide here") == "nothing to hide here"


def test_values_shorter_than_four_characters_are_ignored():
    redactor = Redactor.of(["abc", "", "on"])
    assert redactor.secrets == frozenset()
    assert redactor.redact("abc on the table") == "abc on the table"


def test_four_characters_is_the_minimum():
    assert Redactor.of(["abcd"]).redact("xabcdx") == f"x{MASK}x"


def test_each_long_line_of_a_multi_line_value_is_masked_on_its_own():
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\nAQEFAASCBKcwggSjAgEAAoIB\nend\n-----END KEY-----"
    redactor = Redactor.of([key])
    # The agent printed only one line of the key, and the whole key elsewhere.
    log = "loaded AQEFAASCBKcwggSjAgEAAoIB from disk\n" + key
    out = redactor.redact(log)
    assert "AQEFAASCBKcwggSjAgEAAoIB" not in out and "MIIEvQIBADANBgkqhkiG9w0B" not in out
    assert out == f"loaded {MASK} from disk\n{MASK}"


def test_short_lines_of_a_multi_line_value_are_not_masked_alone():
    redactor = Redactor.of(["first-long-line\nend\n   x   "])
    assert "end" not in redactor.secrets and "   x   " not in redactor.secrets
    assert redactor.redact("the end") == "the end"
    assert "first-long-line" in redactor.secrets


def test_longest_value_first_so_a_prefix_does_not_leave_a_tail():
    redactor = Redactor.of(["token", "token-with-suffix"])
    # Replacing "token" first would leave "[redacted]-with-suffix".
    assert redactor.redact("auth token-with-suffix and token") == f"auth {MASK} and {MASK}"


def _task(name: str = "t1") -> Task:
    return Task.model_validate(
        {"metadata": {"name": name, "namespace": NS, "uid": "u1"}, "spec": {"contexts": []}}
    )


def _workspace(*creds: tuple[str, str]) -> WorkspaceConfig:
    return WorkspaceConfig.model_validate(
        {
            "metadata": {"name": "default", "namespace": NS},
            "spec": {
                "serviceAccountName": "agent",
                "credentials": [
                    {"name": f"c{i}", "secretRef": {"name": secret, "key": key}, "env": f"C{i}"}
                    for i, (secret, key) in enumerate(creds)
                ],
            },
        }
    )


def test_for_task_masks_the_context_secret_and_the_credential_keys():
    reader = StaticReader(
        secrets={
            (NS, manifests.secret_name("t1")): {"api.md": "context-secret-value", "b.md": "second-context-value"},
            (NS, "llm"): {"api-key": "sk-live-123456", "unused": "not-given-to-the-agent"},
            (NS, "other-ns-secret"): {"k": "irrelevant"},
        }
    )
    redactor = Redactor.for_task(reader, _task(), _workspace(("llm", "api-key")))
    text = "ctx context-secret-value second-context-value key sk-live-123456 other not-given-to-the-agent"
    assert redactor.redact(text) == f"ctx {MASK} {MASK} key {MASK} other not-given-to-the-agent"
    assert ("secret", NS, manifests.secret_name("t1")) in reader.reads and ("secret", NS, "llm") in reader.reads


def test_for_task_tolerates_missing_secrets_and_keys():
    reader = StaticReader(secrets={(NS, "llm"): {"other": "value-of-other"}})
    redactor = Redactor.for_task(reader, _task(), _workspace(("llm", "api-key"), ("gone", "token")))
    assert redactor.secrets == frozenset()
    assert redactor.redact("plain log value-of-other") == "plain log value-of-other"


def test_for_task_reads_only_the_tasks_namespace():
    reader = StaticReader(secrets={("elsewhere", "llm"): {"api-key": "sk-live-123456"}})
    redactor = Redactor.for_task(reader, _task(), _workspace(("llm", "api-key")))
    assert redactor.redact("sk-live-123456") == "sk-live-123456"
    assert {ns for _, ns, _ in reader.reads} == {NS}


def test_the_base64_of_a_value_is_masked_too():
    value = "sk-live-0123456789abcdef"
    redactor = Redactor.of([value + "\n"])
    text = f"{base64.b64encode(value.encode()).decode()} and {base64.b64encode((value + chr(10)).encode()).decode()}"
    assert redactor.redact(text) == f"{MASK} and {MASK}"


def test_a_credential_without_a_key_masks_every_value_of_its_secret():
    reader = StaticReader(secrets={(NS, "provider"): {"API_KEY": "sk-provider-1234", "ORG": "org-secret-5678"}})
    workspace = WorkspaceConfig.model_validate(
        {"metadata": {"name": "default", "namespace": NS}, "spec": {"credentials": [{"secretRef": {"name": "provider"}}]}}
    )
    redactor = Redactor.for_task(reader, _task(), workspace)
    assert redactor.redact("sk-provider-1234 org-secret-5678") == f"{MASK} {MASK}"


def test_the_url_encoded_forms_of_a_value_are_masked_too():
    value = "p@ss word/with+symbols"
    redactor = Redactor.of([value])
    text = "GET /login?pw=p%40ss%20word%2Fwith%2Bsymbols and form pw=p%40ss+word%2Fwith%2Bsymbols"
    assert redactor.redact(text) == f"GET /login?pw={MASK} and form pw={MASK}"


def test_a_log_read_cut_at_its_byte_limit_loses_its_last_partial_line():
    assert complete_lines("one\ntwo\n", 64) == "one\ntwo\n"  # under the limit: untouched
    cut = "one\ntwo\nsk-live-01"  # the read stopped inside a secret
    assert complete_lines(cut, len(cut.encode())) == "one\ntwo\n"
    assert complete_lines("x" * 10, 10) == ""  # one line longer than the limit: nothing of it
