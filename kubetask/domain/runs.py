"""The contract between the bridge and the code location: job names, run tags and run config.

The bridge submits runs with these; the code location's jobs read them. Only a reference to the CR
travels (namespace, name, uid, generation): the run's ops read the spec fresh from the API server.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from kubetask import objects, vocabulary

TASK_JOB = "task_job"
BATCH_JOB = "batch_job"
POOL_JOB = "pool_job"
POOL_STEP = "run_pooled_task"


def run_tags(obj: Mapping[str, Any], kind: str) -> dict[str, str]:
    """The tags of the run of a Task or BatchRun (all strings); ``kubetask.io/batch`` for a BatchRun
    that runs a Batch by reference."""
    ns, name = objects.key_of(obj)
    tags = {
        vocabulary.TAG_KIND: kind,
        vocabulary.TAG_NAMESPACE: ns,
        vocabulary.TAG_NAME: name,
        vocabulary.TAG_UID: objects.uid_of(obj),
        vocabulary.TAG_GENERATION: str(objects.generation_of(obj)),
    }
    ref = objects.spec(obj).get("batchRef")
    if kind == vocabulary.KIND_BATCHRUN and ref:
        tags[vocabulary.TAG_BATCH] = str(ref)
    return tags


def identity_tags(obj: Mapping[str, Any], kind: str) -> dict[str, str]:
    """The tags that find the run of this object's current generation (idempotent submission)."""
    tags = {vocabulary.TAG_UID: objects.uid_of(obj), vocabulary.TAG_GENERATION: str(objects.generation_of(obj))}
    if kind == vocabulary.KIND_BATCHRUN:
        tags = {vocabulary.TAG_KIND: kind, **tags}
    return tags


def is_run_of(tags: Mapping[str, str], obj: Mapping[str, Any]) -> bool:
    """Whether a run's tags name this very object: its namespace, name and uid.

    A status's ``dagsterRunId`` is only a claim (a tenant who may write ``*/status`` can point it at
    another team's run): terminating, adopting or re-executing a run is done only when this holds."""
    ns, name = objects.key_of(obj)
    return (tags.get(vocabulary.TAG_NAMESPACE), tags.get(vocabulary.TAG_NAME), tags.get(vocabulary.TAG_UID)) == (
        ns,
        name,
        objects.uid_of(obj),
    )


def task_run_config(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Run config of ``task_job`` for one Task."""
    ns, name = objects.key_of(obj)
    ref = {"namespace": ns, "name": name, "uid": objects.uid_of(obj), "generation": objects.generation_of(obj)}
    return {"ops": {"prepare_task": {"config": ref}}}


def batch_run_config(namespace: str, name: str, uid: str, parallelism: int) -> dict[str, Any]:
    """Run config of ``batch_job`` for one BatchRun: at most ``parallelism`` Tasks at once."""
    return {
        "ops": {"expand_batch": {"config": {"namespace": namespace, "name": name, "uid": uid}}},
        "execution": {"config": {"max_concurrent": parallelism}},
    }


def pool_run_config(namespace: str, pool: str, tasks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Run config of ``pool_job``: the standalone Tasks of one namespace the bridge claimed for ``pool``,
    every one of them running at once (as each would in a run of its own)."""
    refs = []
    for obj in tasks:
        ns, name = objects.key_of(obj)
        if ns != namespace:
            raise ValueError(f"Task {ns}/{name} is not in the pool's namespace {namespace}")
        refs.append({"name": name, "uid": objects.uid_of(obj), "generation": objects.generation_of(obj)})
    return {
        "ops": {"expand_pool": {"config": {"namespace": namespace, "pool": pool, "tasks": refs}}},
        "execution": {"config": {"max_concurrent": max(1, len(refs))}},
    }


def pool_tags(namespace: str, pool: str) -> dict[str, str]:
    """The tags of a pooled run (no Task's name or uid: it runs many)."""
    return {
        vocabulary.TAG_KIND: vocabulary.KIND_TASK_POOL,
        vocabulary.TAG_NAMESPACE: namespace,
        vocabulary.TAG_POOL: pool,
    }


def pool_mapping_key(name: str, uid: str) -> str:
    """The mapping key of a Task's step in its pool: readable, unique (the uid's head) and in the
    alphabet Dagster allows (letters, digits, underscores)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{name}__{uid[:8]}")


def pool_step_key(name: str, uid: str) -> str:
    """The key of a pooled Task's step, as Dagster's UI and logs name it."""
    return f"{POOL_STEP}[{pool_mapping_key(name, uid)}]"


def step_url(run_url: str, step_key: str) -> str:
    """The URL of a run in Dagster's UI that opens on one step (selected, its logs shown)."""
    query = urllib.parse.urlencode({"selection": step_key, "logs": f"step:{step_key}"})
    return f"{run_url}?{query}"
