"""BatchRun expansion (``kubetask.domain.batches``): Tasks, names, labels, owner, parallelism."""

from __future__ import annotations

import json

import pytest

from kubetask import vocabulary
from kubetask.api import BatchRun, BatchTemplate
from kubetask.api.batch import DEFAULT_PARALLELISM
from kubetask.domain import batches

NS = "team-a"


def _file(path: str, text: str) -> dict:
    return {"type": "File", "file": {"filePath": path, "source": {"inline": text}}}


def _template(**extra) -> dict:
    return {
        "commonContext": [_file("/workspace/task.md", "fix the bug"), _file("/workspace/style.md", "be brief")],
        "variableContexts": [
            [_file("/workspace/repo.md", "repo a")],
            [_file("/workspace/repo.md", "repo b"), _file("/workspace/extra.md", "x")],
            [],
        ],
        **extra,
    }


def _inline_run(name: str | None = "nightly-1", *, parallelism: int | None = None, **template) -> BatchRun:
    spec: dict = {"batchSpec": _template(**template)}
    if parallelism is not None:
        spec["parallelism"] = parallelism
    return BatchRun.model_validate({"metadata": {"name": name, "namespace": NS, "uid": "br-uid"}, "spec": spec})


def _ref_run(parallelism: int | None = None, budget: dict | None = None) -> BatchRun:
    spec: dict = {"batchRef": "nightly"}
    if parallelism is not None:
        spec["parallelism"] = parallelism
    if budget is not None:
        spec["budget"] = budget
    return BatchRun.model_validate({"metadata": {"name": "nightly-2", "namespace": NS, "uid": "br2"}, "spec": spec})


def test_one_task_per_variable_contexts_entry_common_first():
    run = _inline_run()
    tasks = batches.expand(run, batches.template_of(run, None))
    assert [t["metadata"]["name"] for t in tasks] == ["nightly-1-task-0", "nightly-1-task-1", "nightly-1-task-2"]
    paths = [[c["file"]["filePath"] for c in t["spec"]["contexts"]] for t in tasks]
    assert paths == [
        ["/workspace/task.md", "/workspace/style.md", "/workspace/repo.md"],
        ["/workspace/task.md", "/workspace/style.md", "/workspace/repo.md", "/workspace/extra.md"],
        ["/workspace/task.md", "/workspace/style.md"],
    ]
    assert [t["spec"]["contexts"][2]["file"]["source"]["inline"] for t in tasks[:2]] == ["repo a", "repo b"]
    assert all(t["kind"] == "Task" and t["apiVersion"] == "kubetask.io/v1alpha1" for t in tasks)
    assert all(t["metadata"]["namespace"] == NS for t in tasks)


def test_tasks_are_labelled_annotated_and_owned_by_the_batchrun():
    run = _inline_run()
    task = batches.expand(run, batches.template_of(run, None))[1]
    meta = task["metadata"]
    assert meta["labels"] == {vocabulary.LABEL_BATCH_RUN: "nightly-1"}  # inline: no Batch label
    assert meta["annotations"] == {vocabulary.EXECUTED_BY: "batchrun/nightly-1"}
    assert meta["ownerReferences"] == [
        {"apiVersion": "kubetask.io/v1alpha1", "kind": "BatchRun", "name": "nightly-1", "uid": "br-uid",
         "controller": True, "blockOwnerDeletion": True}
    ]


def test_a_referenced_batch_adds_the_batch_label():
    batch_spec = BatchTemplate.model_validate(_template())
    tasks = batches.expand(_ref_run(), batches.template_of(_ref_run(), batch_spec))
    assert tasks[0]["metadata"]["labels"] == {vocabulary.LABEL_BATCH_RUN: "nightly-2", vocabulary.LABEL_BATCH: "nightly"}


def test_labels_are_not_shared_between_tasks():
    run = _inline_run()
    tasks = batches.expand(run, batches.template_of(run, None))
    tasks[0]["metadata"]["labels"]["extra"] = "x"
    assert "extra" not in tasks[1]["metadata"]["labels"]


def test_workspace_timeout_and_retries_are_passed_through():
    run = _inline_run(workspaceConfigRef="gpu", timeout="30m", retries={"limit": 2, "backoff": {"initialDelay": "5s"}})
    for task in batches.expand(run, batches.template_of(run, None)):
        assert task["spec"]["workspaceConfigRef"] == "gpu"
        assert task["spec"]["timeout"] == "30m"
        assert task["spec"]["retries"] == {"limit": 2, "backoff": {"initialDelay": "5s"}}


def test_unset_template_fields_stay_out_of_the_task_spec():
    run = _inline_run()
    spec = batches.expand(run, batches.template_of(run, None))[0]["spec"]
    assert set(spec) == {"contexts"}


def test_a_batchrun_without_a_name_is_refused():
    run = _inline_run(name=None)
    with pytest.raises(ValueError, match="metadata.name"):
        batches.expand(run, batches.template_of(run, None))


def test_no_variable_contexts_no_tasks():
    run = BatchRun.model_validate(
        {"metadata": {"name": "empty", "namespace": NS, "uid": "u"},
         "spec": {"batchSpec": {"commonContext": [_file("/a.md", "x")], "variableContexts": []}}}
    )
    assert batches.expand(run, batches.template_of(run, None)) == []


def test_template_of_prefers_the_inline_spec():
    run = _inline_run()
    other = BatchTemplate.model_validate({"commonContext": [], "variableContexts": [[]]})
    assert batches.template_of(run, other) is run.spec.batch_spec


def test_template_of_a_ref_needs_the_batch_spec():
    batch_spec = BatchTemplate.model_validate(_template())
    assert batches.template_of(_ref_run(), batch_spec) is batch_spec
    with pytest.raises(ValueError, match="batchRef"):
        batches.template_of(_ref_run(), None)


def test_effective_parallelism_batchrun_over_batch_over_default():
    with_parallelism = BatchTemplate.model_validate(_template(parallelism=4))
    without = BatchTemplate.model_validate(_template())
    assert batches.effective_parallelism(_ref_run(parallelism=7), with_parallelism) == 7
    assert batches.effective_parallelism(_ref_run(), with_parallelism) == 4
    assert batches.effective_parallelism(_ref_run(), without) == DEFAULT_PARALLELISM


def test_effective_budget_the_batchruns_over_the_batchs():
    capped = BatchTemplate.model_validate(_template(budget={"maxCostUSD": 5}))
    assert batches.effective_budget(_ref_run(), capped) == {"maxCostUSD": 5.0}  # a scheduled run's
    assert batches.effective_budget(_ref_run(budget={"maxTokens": 10}), capped) == {"maxTokens": 10}
    assert batches.effective_budget(_ref_run(), BatchTemplate.model_validate(_template())) is None


@pytest.mark.parametrize("index", [0, 1, 9, 10, 9999])
def test_task_name_and_index_round_trip(index):
    name = batches.task_name("my-run", index)
    assert name == f"my-run-task-{index}"
    assert batches.index_of(name) == index
    assert batches.mapping_key(index) == f"task_{index}"


def test_index_of_a_batchrun_named_like_a_task():
    # The last "-task-<i>" is the index, even when the BatchRun's own name contains "-task-".
    assert batches.index_of(batches.task_name("x-task-3", 12)) == 12


@pytest.mark.parametrize("name", ["standalone", "nightly-task-", "nightly-task-1a", "nightly-task-x", "nightly-tasks-1", ""])
def test_index_of_refuses_other_names(name):
    assert batches.index_of(name) is None


def test_executed_by():
    assert batches.executed_by("nightly-1") == f"{vocabulary.EXECUTED_BY_BATCHRUN}/nightly-1"


def test_a_batch_over_the_budget_is_refused_before_any_task():
    from kubetask.api import BatchTemplate
    from kubetask.domain.batches import check_budget
    from kubetask.domain.errors import TaskError

    big = {"type": "File", "file": {"filePath": "/workspace/task.md", "source": {"inline": "x" * 100_000}}}
    shared = BatchTemplate.model_validate({"commonContext": [big], "variableContexts": [[] for _ in range(20)]})
    check_budget(shared, max_bytes=1_000_000)  # the common inline text is stored once, not 20 times
    own = BatchTemplate.model_validate({"commonContext": [], "variableContexts": [[big] for _ in range(20)]})
    with pytest.raises(TaskError) as raised:
        check_budget(own, max_bytes=1_000_000)
    assert raised.value.reason == "BatchTooLarge"
    assert "20 Tasks of 1.9 MiB in all" in raised.value.message
    many = BatchTemplate.model_validate({"commonContext": [], "variableContexts": [[] for _ in range(11)]})
    with pytest.raises(TaskError, match="11 Tasks is over the budget of 10 Tasks per BatchRun"):
        check_budget(many, max_tasks=10)


def test_the_common_inline_text_is_one_configmap_the_tasks_reference():
    from kubetask.api import BatchRun

    batchrun = BatchRun.model_validate({
        "apiVersion": "kubetask.io/v1alpha1", "kind": "BatchRun",
        "metadata": {"name": "nightly", "namespace": "team-a", "uid": "u-1"},
        "spec": {"batchSpec": {
            "commonContext": [
                {"type": "File", "file": {"filePath": "/workspace/task.md", "source": {"inline": "Do the thing."}}},
                {"type": "File", "file": {"filePath": "/workspace/task.md", "source": {"configMapKeyRef": {"name": "org", "key": "g"}}}},
                {"type": "Git", "git": {"repository": "https://example.com/r.git", "path": "/workspace/r"}},
            ],
            "variableContexts": [[{"type": "File", "file": {"filePath": "/workspace/t.md", "source": {"inline": f"item {i}"}}}]
                                 for i in range(3)],
        }},
    })
    template = batches.template_of(batchrun, None)
    config_map, common = batches.share_common(batchrun, template)
    assert config_map is not None
    assert config_map["metadata"]["name"] == "nightly-common" and config_map["metadata"]["namespace"] == "team-a"
    assert config_map["data"] == {"common-0": "Do the thing."}
    [owner] = config_map["metadata"]["ownerReferences"]
    assert owner["kind"] == "BatchRun" and owner["uid"] == "u-1" and owner["controller"] is True
    assert common[0] == {"type": "File", "file": {"filePath": "/workspace/task.md",
                                                   "source": {"configMapKeyRef": {"name": "nightly-common", "key": "common-0"}}}}
    assert common[1:] == [c.to_k8s() for c in template.common_context[1:]]  # references stay as they are
    tasks = batches.expand(batchrun, template, common)
    assert [t["spec"]["contexts"][:3] for t in tasks] == [common] * 3
    assert tasks[2]["spec"]["contexts"][3]["file"]["source"] == {"inline": "item 2"}
    assert "Do the thing." not in json.dumps(tasks)

    nothing_inline = batchrun.model_copy(deep=True)
    nothing_inline.spec.batch_spec.common_context = template.common_context[1:]
    assert batches.share_common(nothing_inline, batches.template_of(nothing_inline, None))[0] is None


def test_a_common_text_over_what_a_configmap_holds_is_refused():
    from kubetask.api import BatchRun
    from kubetask.domain.errors import TaskError

    huge = {"type": "File", "file": {"filePath": "/workspace/task.md", "source": {"inline": "x" * 600_000}}}
    batchrun = BatchRun.model_validate({"metadata": {"name": "b", "namespace": "n", "uid": "u"},
                                        "spec": {"batchSpec": {"commonContext": [huge, huge], "variableContexts": [[]]}}})
    with pytest.raises(TaskError) as raised:
        batches.share_common(batchrun, batches.template_of(batchrun, None))
    assert raised.value.reason == "ContextTooLarge" and "commonContext" in raised.value.message
