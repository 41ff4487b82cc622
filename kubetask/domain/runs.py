"""The contract between the bridge and the code location: job names, run tags and run config.

The bridge submits runs with these; the code location's jobs read them. Only a reference to the CR
travels (namespace, name, uid, generation): the run's ops read the spec fresh from the API server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetask import objects, vocabulary

TASK_JOB = "task_job"
BATCH_JOB = "batch_job"


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
