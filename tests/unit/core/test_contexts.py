"""Context resolution and aggregation: the original's format and keys, refs, secrets, remote files."""

import hashlib

import pytest

from kubetask.api import Context, Task, WorkspaceConfigSpec
from kubetask.domain.contexts import (
    ContextFile,
    Part,
    SourceInfo,
    aggregate,
    all_contexts,
    display_url,
    file_keys,
    host_allowed,
    resolve,
)
from kubetask.domain.errors import TaskError
from tests.fakes import StaticReader

NS = "team-a"


def inline(path, text):
    return Context.model_validate({"type": "File", "file": {"filePath": path, "source": {"inline": text}}})


def cm(path, name, key, optional=None):
    ref = {"name": name, "key": key} | ({"optional": optional} if optional is not None else {})
    return Context.model_validate({"type": "File", "file": {"filePath": path, "source": {"configMapKeyRef": ref}}})


def secret(path, name, key, optional=None):
    ref = {"name": name, "key": key} | ({"optional": optional} if optional is not None else {})
    return Context.model_validate({"type": "File", "file": {"filePath": path, "source": {"secretKeyRef": ref}}})


def remote(path, url, headers=None):
    body = {"filePath": path, "url": url} | ({"headers": headers} if headers else {})
    return Context.model_validate({"type": "RemoteFile", "remoteFile": body})


def git(path, repo="https://example.com/org/repo.git"):
    return Context.model_validate({"type": "Git", "git": {"repository": repo, "path": path}})


def part(path, content, sensitive=False):
    return Part(path, content, SourceInfo("inline", "inline", sensitive, "", len(content)))


# --- aggregation -------------------------------------------------------------------------------


def test_three_contexts_on_one_path_are_wrapped_exactly():
    path = "/workspace/task.md"
    files = aggregate([part(path, "# Guide\nRun tests."), part(path, "Do it."), part(path, "<b>&</b>")])
    assert [f.file_path for f in files] == ["/workspace/task.md"]
    assert files[0].content == (
        '<context index="0">\n# Guide\nRun tests.\n</context>\n\n'
        '<context index="1">\nDo it.\n</context>\n\n'
        '<context index="2">\n<b>&</b>\n</context>'
    )
    assert files[0].key == "workspace-task.md"


def test_single_part_is_verbatim():
    files = aggregate([part("/workspace/task.md", "exactly this\n")])
    assert files[0].content == "exactly this\n"


def test_empty_parts_are_dropped_and_do_not_count_in_the_index():
    files = aggregate([part("/a", ""), part("/a", "x"), part("/b", ""), part("/a", "y")])
    assert [f.file_path for f in files] == ["/a"]
    assert files[0].content == '<context index="0">\nx\n</context>\n\n<context index="1">\ny\n</context>'
    assert len(files[0].sources) == 2
    assert aggregate([part("/a", ""), part("/a", "only")])[0].content == "only"


def test_files_keep_first_appearance_order_and_sensitivity():
    files = aggregate([part("/z", "1"), part("/a", "2", sensitive=True), part("/z", "3")])
    assert [(f.file_path, f.sensitive) for f in files] == [("/z", False), ("/a", True)]
    mixed = aggregate([part("/m", "plain"), part("/m", "secret", sensitive=True)])
    assert mixed[0].sensitive


def test_describe_has_hash_and_size_but_no_content():
    [plain] = aggregate([part("/workspace/p", "guidelines")])
    assert plain.describe()["sha256"] == hashlib.sha256(b"guidelines").hexdigest()
    [file] = aggregate([part("/workspace/s", "top-secret", sensitive=True)])
    described = file.describe()
    assert described["sha256"] is None  # a hash of a guessable secret would be the secret
    assert described["size"] == 10 and described["sensitive"] is True
    assert "top-secret" not in repr(described) and "top-secret" not in repr(file)


# --- keys ---------------------------------------------------------------------------------------


def test_keys_follow_the_original_mapping():
    assert file_keys(["/workspace/task.md", "/workspace/config/settings.json"]) == {
        "/workspace/task.md": "workspace-task.md",
        "/workspace/config/settings.json": "workspace-config-settings.json",
    }


def test_invalid_characters_become_underscores():
    assert file_keys(["/work space/ä.md"]) == {"/work space/ä.md": "work_space-_.md"}


def test_colliding_paths_both_get_a_hash_suffix():
    keys = file_keys(["/a/b-c", "/a-b/c", "/other"])
    for path in ("/a/b-c", "/a-b/c"):
        assert keys[path] == f"a-b-c-{hashlib.sha256(path.encode()).hexdigest()[:8]}"
    assert keys["/other"] == "other"
    assert len(set(keys.values())) == 3
    assert file_keys(["/a-b/c", "/a/b-c"]) == {p: keys[p] for p in ("/a-b/c", "/a/b-c")}


def test_long_keys_are_truncated_with_a_hash():
    path = "/" + "x" * 300
    key = file_keys([path])[path]
    assert len(key) == 253
    assert key.endswith("-" + hashlib.sha256(path.encode()).hexdigest()[:8])


def test_a_key_that_still_clashes_is_refused():
    suffix = hashlib.sha256(b"/a/b-c").hexdigest()[:8]
    with pytest.raises(TaskError) as err:
        file_keys(["/a/b-c", "/a-b/c", f"/a-b-c-{suffix}"])
    assert err.value.reason == "ContextKeyConflict"


# --- resolution ---------------------------------------------------------------------------------


def test_all_contexts_puts_workspace_defaults_first():
    workspace = WorkspaceConfigSpec.model_validate(
        {"serviceAccountName": "sa", "defaultContexts": [{"type": "File", "file": {"filePath": "/w/t.md", "source": {"inline": "org"}}}]}
    )
    task = Task.model_validate(
        {"metadata": {"name": "t", "namespace": NS}, "spec": {"contexts": [{"type": "File", "file": {"filePath": "/w/t.md", "source": {"inline": "task"}}}]}}
    )
    contexts = all_contexts(task, workspace)
    [file] = aggregate(resolve(contexts, NS, StaticReader()).parts)
    assert file.content == '<context index="0">\norg\n</context>\n\n<context index="1">\ntask\n</context>'
    assert all_contexts(task, WorkspaceConfigSpec(service_account_name="sa")) == task.spec.contexts


def test_resolves_every_source_kind_in_order():
    reader = StaticReader(
        config_maps={(NS, "notes"): {"a.md": "from cm"}},
        secrets={(NS, "creds"): {"token": "s3cret"}},
        urls={"https://example.com/style.md?sig=abc": "from url"},
    )
    contexts = [
        inline("/w/t.md", "inline"),
        cm("/w/t.md", "notes", "a.md"),
        secret("/w/s.md", "creds", "token"),
        remote("/w/r.md", "https://example.com/style.md?sig=abc"),
        git("/w/repo"),
    ]
    result = resolve(contexts, NS, reader)
    assert [(p.file_path, p.content) for p in result.parts] == [
        ("/w/t.md", "inline"), ("/w/t.md", "from cm"), ("/w/s.md", "s3cret"), ("/w/r.md", "from url")
    ]
    assert [(p.source.kind, p.source.ref, p.source.sensitive) for p in result.parts] == [
        ("inline", "inline", False),
        ("configMap", "configmap/notes/a.md", False),
        ("secret", "secret/creds/token", True),
        ("remote", "https://example.com/style.md", False),
    ]
    assert result.parts[1].source.sha256 == hashlib.sha256(b"from cm").hexdigest()
    assert result.parts[2].source.sha256 is None  # from a Secret: no hash
    assert result.parts[2].source.size == 6
    assert [g.path for g in result.git] == ["/w/repo"]


def test_optional_missing_refs_yield_nothing():
    reader = StaticReader(config_maps={(NS, "notes"): {"a.md": "x"}})
    contexts = [
        cm("/w/a", "notes", "absent", optional=True),
        cm("/w/a", "missing", "k", optional=True),
        secret("/w/a", "missing", "k", optional=True),
    ]
    result = resolve(contexts, NS, reader)
    assert [p.content for p in result.parts] == ["", "", ""]
    assert aggregate(result.parts) == []


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        (cm("/w/a", "notes", "absent"), 'context #0 (File /w/a): ConfigMap "notes" has no key "absent" in namespace "team-a"'),
        (cm("/w/a", "gone", "k"), 'context #0 (File /w/a): ConfigMap "gone" not found in namespace "team-a"'),
        (secret("/w/a", "creds", "nope"), 'context #0 (File /w/a): Secret "creds" has no key "nope" in namespace "team-a"'),
        (secret("/w/a", "gone", "k", optional=False), 'context #0 (File /w/a): Secret "gone" not found in namespace "team-a"'),
    ],
)
def test_missing_refs_fail_with_a_clear_reason(context, expected):
    reader = StaticReader(config_maps={(NS, "notes"): {"a.md": "x"}}, secrets={(NS, "creds"): {"token": "s3cret"}})
    with pytest.raises(TaskError) as err:
        resolve([context], NS, reader)
    assert err.value.reason == "ContextRefNotFound"
    assert err.value.message == expected
    assert "s3cret" not in str(err.value)


def test_error_names_the_index_in_all_contexts():
    with pytest.raises(TaskError, match=r"context #2 \(File /w/b\)"):
        resolve([inline("/w/a", "x"), inline("/w/a", "y"), cm("/w/b", "gone", "k")], NS, StaticReader())


def test_only_the_task_namespace_is_read_and_each_object_once():
    reader = StaticReader(
        config_maps={(NS, "notes"): {"a": "1", "b": "2"}, ("other", "notes"): {"a": "wrong"}},
        secrets={(NS, "creds"): {"x": "3", "y": "4"}},
    )
    contexts = [
        cm("/a", "notes", "a"),
        cm("/b", "notes", "b"),
        secret("/c", "creds", "x"),
        secret("/d", "creds", "y"),
        cm("/e", "gone", "k", optional=True),
        cm("/f", "gone", "k", optional=True),
    ]
    result = resolve(contexts, NS, reader)
    assert [p.content for p in result.parts] == ["1", "2", "3", "4", "", ""]
    assert reader.reads == [("configMap", NS, "notes"), ("secret", NS, "creds"), ("configMap", NS, "gone")]


def test_remote_headers_from_secrets_make_the_file_sensitive():
    reader = StaticReader(secrets={(NS, "api"): {"token": "Bearer s3cret\n"}}, urls={"https://example.com/a": "body"})
    headers = [
        {"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}},
        {"name": "Accept", "value": "text/plain"},
    ]
    result = resolve([remote("/w/a", "https://example.com/a", headers)], NS, reader, remote_timeout=3.0, remote_max_bytes=99)
    assert reader.fetches == [("https://example.com/a", {"Authorization": "Bearer s3cret", "Accept": "text/plain"})]
    assert result.parts[0].source.sensitive
    assert aggregate(result.parts)[0].sensitive
    plain = resolve([remote("/w/a", "https://example.com/a", [{"name": "Accept", "value": "x"}])], NS, reader)
    assert not plain.parts[0].source.sensitive


def test_remote_files_share_one_budget_of_bytes_and_seconds():
    reader = StaticReader(urls={f"https://example.com/{i}": "x" * 400 for i in range(3)})
    now = [100.0]

    def clock() -> float:
        now[0] += 1.0  # each look at the clock is a second later
        return now[0]

    contexts = [remote(f"/w/{i}", f"https://example.com/{i}") for i in range(3)]
    result = resolve(contexts[:2], NS, reader, remote_timeout=30.0, remote_max_bytes=1000, clock=clock)
    assert [len(p.content) for p in result.parts] == [400, 400]
    assert reader.budgets == [(29.0, 1000), (27.0, 600)]  # what is left, not a fresh allowance per file
    assert result.remote_seconds == 4.0  # what the fetches took: the Task's timeout is shortened by it
    assert resolve([], NS, reader, clock=clock).remote_seconds == 0.0
    with pytest.raises(TaskError) as err:  # the third would go over 1000 bytes in all
        resolve(contexts, NS, reader, remote_timeout=30.0, remote_max_bytes=1000, clock=clock)
    assert err.value.reason == "RemoteFileUnavailable" and "more than 200 bytes" in err.value.message
    with pytest.raises(TaskError) as err:
        resolve(contexts, NS, reader, remote_timeout=4.5, remote_max_bytes=10_000, clock=clock)
    assert err.value.message.startswith("context #2 (RemoteFile /w/2): not fetched")
    assert "budget of 4.5 s" in err.value.message


def test_a_secret_header_goes_only_to_the_hosts_the_workspace_lists():
    reader = StaticReader(secrets={(NS, "api"): {"token": "Bearer s3cret"}},
                          urls={"https://api.example.com/a": "ok", "https://evil.example.net/a": "loot"})
    headers = [{"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}]
    allowed = resolve([remote("/w/a", "https://api.example.com/a", headers)], NS, reader, secret_header_hosts=["*.example.com"])
    assert allowed.parts[0].content == "ok"
    with pytest.raises(TaskError) as err:
        resolve([remote("/w/a", "https://evil.example.net/a", headers)], NS, reader, secret_header_hosts=["api.example.com"])
    assert err.value.reason == "RemoteFileRefused"
    assert 'Secret "api"' in err.value.message and "evil.example.net is not one of them" in err.value.message
    assert [url for url, _ in reader.fetches] == ["https://api.example.com/a"]  # nothing was sent to the other host
    plain = resolve([remote("/w/a", "https://evil.example.net/a", [{"name": "Accept", "value": "x"}])], NS, reader,
                    secret_header_hosts=["api.example.com"])
    assert plain.parts[0].content == "loot"  # headers without a Secret are not limited


def test_host_patterns_match_a_name_or_the_hosts_below_it():
    assert host_allowed("api.example.com", ["api.example.com"]) and host_allowed("API.Example.com.", ["api.example.com"])
    assert host_allowed("a.b.example.com", ["*.example.com"])
    assert not host_allowed("example.com", ["*.example.com"]) and not host_allowed("badexample.com", ["*.example.com"])
    assert not host_allowed("api.example.com.evil.net", ["api.example.com"])


def test_remote_header_secret_missing_is_context_ref_not_found():
    headers = [{"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}]
    with pytest.raises(TaskError) as err:
        resolve([remote("/w/a", "https://example.com/a", headers)], NS, StaticReader(urls={"https://example.com/a": "x"}))
    assert err.value.reason == "ContextRefNotFound"
    assert 'header "Authorization"' in err.value.message and 'Secret "api" not found' in err.value.message


def test_remote_failure_names_the_context_but_not_the_query_string():
    with pytest.raises(TaskError) as err:
        resolve([remote("/w/a", "https://user:pw@example.com/a?token=abc")], NS, StaticReader())
    assert err.value.reason == "RemoteFileUnavailable"
    assert err.value.message.startswith("context #0 (RemoteFile /w/a): GET https://example.com/a ")
    assert "abc" not in err.value.message and "pw" not in err.value.message


def test_display_url_strips_credentials_query_and_fragment():
    assert display_url("https://u:p@Example.com:8443/x/y?q=1#f") == "https://example.com:8443/x/y"


def test_context_file_hides_its_content_and_describes_itself_without_it():
    secret = "s3cret-value"
    file = ContextFile("/a", secret, True, "a", [])
    assert secret not in repr(file)  # a file in a log line or a traceback shows no content
    described = file.describe()
    assert secret not in str(described)
    assert described == {"filePath": "/a", "key": "a", "sensitive": True, "size": len(secret),
                         "sha256": None, "sources": []}
    assert file != ContextFile("/a", "other", True, "a", [])  # compared by value, content included
