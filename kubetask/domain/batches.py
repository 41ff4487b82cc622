"""BatchRun expansion (pure): commonContext + variableContexts[i] -> Task i, names, parallelism.

The commonContext's inline text is not copied into every Task: it goes once into the ConfigMap
``<batchrun>-common``, owned by the BatchRun, and each Task's common File contexts read it by
``configMapKeyRef`` (the other kinds of context are references already). A 1 MiB commonContext with
10,000 entries is 1 MiB in etcd, not 10 GiB.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kubetask import vocabulary
from kubetask.api import BatchRun, BatchTemplate
from kubetask.api.base import API_VERSION, OwnerReference
from kubetask.api.batch import DEFAULT_PARALLELISM
from kubetask.domain.errors import TaskError
from kubetask.vocabulary import BATCH_TOO_LARGE, CONTEXT_TOO_LARGE

MAX_COMMON_BYTES = 1_000_000
"""What the common ConfigMap may hold (an object's limit is 1 MiB, with its metadata)."""

EXECUTED_BY_BATCHRUN = "batchrun"


def task_name(batchrun_name: str, index: int) -> str:
    """Task ``index`` of a BatchRun, as the original named it."""
    return f"{batchrun_name}-task-{index}"


def mapping_key(index: int) -> str:
    """Dagster mapping key of Task ``index`` (step ``run_batch_task[task_<i>]``)."""
    return f"task_{index}"


def index_of(name: str) -> int | None:
    """The index of a BatchRun's Task from its name, or None."""
    match = re.search(r"-task-(\d+)$", name)
    return int(match.group(1)) if match else None


def executed_by(batchrun_name: str) -> str:
    """The ``kubetask.io/executed-by`` value of a BatchRun's Tasks: the bridge leaves them alone."""
    return f"{EXECUTED_BY_BATCHRUN}/{batchrun_name}"


def effective_parallelism(batchrun: BatchRun, template: BatchTemplate) -> int:
    """BatchRun over Batch over the default."""
    return batchrun.spec.parallelism or template.parallelism or DEFAULT_PARALLELISM


def effective_budget(batchrun: BatchRun, template: BatchTemplate) -> dict[str, Any] | None:
    """The BatchRun's budget, else its batch's (a scheduled run's comes from its Batch), as stored."""
    budget = batchrun.spec.budget or template.budget
    return budget.to_k8s() if budget is not None else None


def template_of(batchrun: BatchRun, batch_spec: BatchTemplate | None) -> BatchTemplate:
    """The batch a BatchRun runs: its inline spec, or the referenced Batch's (given)."""
    if batchrun.spec.batch_spec is not None:
        return batchrun.spec.batch_spec
    if batch_spec is None:
        raise ValueError("a BatchRun with batchRef needs the Batch's spec")
    return batch_spec


def common_config_map_name(batchrun_name: str) -> str:
    return f"{batchrun_name}-common"


def owner_of(batchrun: BatchRun) -> dict[str, Any]:
    """The controller ownerReference of what the BatchRun's run creates (its Tasks, its common ConfigMap)."""
    meta = batchrun.metadata
    if not meta.name:
        raise ValueError("the BatchRun needs metadata.name (read it from the API server)")
    return OwnerReference.controller_of("BatchRun", meta.name, meta.uid or "")


def share_common(batchrun: BatchRun, template: BatchTemplate) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The ConfigMap of the commonContext's inline text (None when it has none) and the common contexts of
    every Task, which read that text from it. Raises ``TaskError(ContextTooLarge)`` over ``MAX_COMMON_BYTES``."""
    name = common_config_map_name(str(batchrun.metadata.name))
    data: dict[str, str] = {}
    shared: list[dict[str, Any]] = []
    for index, context in enumerate(template.common_context):
        if context.file is None or context.file.source.inline is None:
            shared.append(context.to_k8s())
            continue
        key = f"common-{index}"
        data[key] = context.file.source.inline
        source = {"configMapKeyRef": {"name": name, "key": key}}
        shared.append({"type": "File", "file": {"filePath": context.file.file_path, "source": source}})
    if not data:
        return None, shared
    size = sum(len(v.encode()) for v in data.values())
    if size > MAX_COMMON_BYTES:
        raise TaskError(
            CONTEXT_TOO_LARGE,
            f"the commonContext's inline text is {_mib(size)}, over the {_mib(MAX_COMMON_BYTES)} its ConfigMap "
            "may hold: move part of it to ConfigMaps of its own (configMapKeyRef contexts)",
        )
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": batchrun.metadata.namespace,
            "labels": {vocabulary.LABEL_BATCH_RUN: str(batchrun.metadata.name)},
            "ownerReferences": [owner_of(batchrun)],
        },
        "data": data,
    }
    return config_map, shared


# Defaults that keep etcd (2 GiB quota by default) and the bridge's cache safe; operators raise them.
DEFAULT_MAX_TASKS = 10_000
DEFAULT_MAX_BYTES = 100 * 1024 * 1024


def check_budget(
    template: BatchTemplate, *, max_tasks: int = DEFAULT_MAX_TASKS, max_bytes: int = DEFAULT_MAX_BYTES
) -> None:
    """Refuse a batch whose Tasks would be too many or too big together, before any is created.

    Each Task carries the common contexts' references and its own variableContexts; the commonContext's
    inline text is counted once (``share_common``). Raises ``TaskError(BatchTooLarge)`` naming the count,
    the size and the budget."""
    count = len(template.variable_contexts)
    inline = sum(len(c.file.source.inline.encode()) for c in template.common_context if c.file and c.file.source.inline)
    common = len(json.dumps([c.to_k8s() for c in template.common_context])) - inline
    total = inline + count * common + sum(len(json.dumps([c.to_k8s() for c in v])) for v in template.variable_contexts)
    if count > max_tasks:
        raise TaskError(BATCH_TOO_LARGE, f"{count} Tasks is over the budget of {max_tasks} Tasks per BatchRun")
    if total > max_bytes:
        raise TaskError(
            BATCH_TOO_LARGE,
            f"{count} Tasks of {_mib(total)} in all (each carries {_mib(common)} of common context references) is "
            f"over the budget of {_mib(max_bytes)}: move shared content to the commonContext or split the batch",
        )


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def expand(
    batchrun: BatchRun, template: BatchTemplate, common: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The Task objects of a BatchRun: owned by it, labelled with it, executed by its run. ``common`` is
    the common contexts every Task gets (``share_common``'s); by default the commonContext as written."""
    meta = batchrun.metadata
    owner = owner_of(batchrun)
    name = str(meta.name)
    labels = {vocabulary.LABEL_BATCH_RUN: name}
    if batchrun.spec.batch_ref:
        labels[vocabulary.LABEL_BATCH] = batchrun.spec.batch_ref
    if common is None:
        common = [c.to_k8s() for c in template.common_context]
    tasks = []
    for i, variable in enumerate(template.variable_contexts):
        spec: dict[str, Any] = {"contexts": common + [c.to_k8s() for c in variable]}
        if template.workspace_config_ref:
            spec["workspaceConfigRef"] = template.workspace_config_ref
        if template.timeout:
            spec["timeout"] = template.timeout
        if template.retries:
            spec["retries"] = template.retries.to_k8s()
        tasks.append(
            {
                "apiVersion": API_VERSION,
                "kind": "Task",
                "metadata": {
                    "name": task_name(name, i),
                    "namespace": meta.namespace,
                    "labels": dict(labels),
                    "annotations": {vocabulary.EXECUTED_BY: executed_by(name)},
                    "ownerReferences": [owner],
                },
                "spec": spec,
            }
        )
    return tasks
