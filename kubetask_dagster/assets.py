"""Lineage: one Dagster asset per Batch, one partition per Task index.

``["kubetask", <ns>, "batches", <batch>]`` is the key ``batch_job``'s steps record each Task's outcome on
(``batch_ops.batch_asset_key``, partition ``task-<i>``): a completed Task is a materialization of its
partition, a failed attempt an observation, each with the Task, Job, pod, exit code and kubectl
commands as metadata. Declaring the asset gives those events a partition grid, a description and
links back to the Batch.

Materializing the asset from Dagster's UI (any partition selection, or a backfill) runs its op, which
creates a BatchRun of the Batch: ``kubectl get batchruns`` shows it, and the bridge runs it with
``batch_job`` like any other BatchRun. The op itself records no materialization (the Tasks do, when
they have run): it records an observation carrying the BatchRun's name, uid and kubectl command. A
backfill of several partitions runs as one run (``BackfillPolicy.single_run``), and every run of one
backfill names the same BatchRun, so one request is one BatchRun.

Standalone Tasks record their events on ``["kubetask", <ns>, "tasks"]`` (partition = Task name). That
key is left undeclared: it shows in the asset catalog with its event history, and declaring it would
need the set of Tasks as partitions (a reload per Task, or dynamic partitions that grow forever).
"""

from collections.abc import Iterable
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetObservation,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    Failure,
    MetadataValue,
    StaticPartitionsDefinition,
    multi_asset,
)

from kubetask import vocabulary
from kubetask.domain.catalog import BatchEntry
from kubetask.domain.scheduling import materialization_batchrun_body, materialization_batchrun_name, owned_by
from kubetask_dagster.resources import KubeResource

BACKFILL_TAG = "dagster/backfill"


def create_batchrun(
    api: Any, namespace: str, batch_name: str, request_id: str, run_id: str
) -> tuple[dict[str, Any], bool]:
    """Create (or find, for a retried step or another run of the same backfill) the request's BatchRun.

    Returns the BatchRun and whether this call created it."""
    batch = api.get_custom("batches", namespace, batch_name)
    if batch is None:
        raise Failure(f"Batch {namespace}/{batch_name} no longer exists", allow_retries=False)
    name = materialization_batchrun_name(batch_name, request_id)
    body = materialization_batchrun_body(batch, name, run_id)
    created = api.create_custom("batchruns", namespace, body)
    if created is not None:
        return created, True
    existing = api.get_custom("batchruns", namespace, name)
    if existing is None or not owned_by(existing, batch["metadata"]["uid"]):
        raise Failure(
            f"BatchRun {namespace}/{name} exists and does not belong to Batch {batch_name}", allow_retries=False
        )
    return existing, False


def _description(entry: BatchEntry) -> str:
    lines = [
        f"Batch `{entry.namespace}/{entry.name}`: {entry.tasks} Task(s), one partition per Task (`task-<i>` is "
        f"commonContext + variableContexts[i]).",
        "",
        "Materializing it (any partitions) creates a BatchRun of the whole Batch; each Task's outcome is then "
        "recorded on its partition.",
    ]
    if entry.schedule:
        lines += [
            "",
            f"Scheduled: `{entry.schedule.cron}` ({entry.schedule.time_zone}), schedule `{entry.schedule.name}`.",
        ]
    lines += ["", f"`{entry.kubectl}`"]
    return "\n".join(lines)


def batch_asset(entry: BatchEntry) -> AssetsDefinition:
    """The asset of one Batch."""
    ns, batch = entry.namespace, entry.name
    key = AssetKey(entry.asset_key)
    metadata: dict[str, Any] = {
        "namespace": ns,
        "batch": batch,
        "uid": entry.uid,
        "generation": entry.generation,
        "tasks": entry.tasks,
        "kubectl": MetadataValue.text(f"{entry.kubectl}; kubectl -n {ns} get batchruns -l kubetask.io/batch={batch}"),
    }
    if entry.workspace_config:
        metadata["workspaceConfig"] = entry.workspace_config
    if entry.schedule:
        metadata["schedule"] = entry.schedule.name

    partitions = StaticPartitionsDefinition(entry.partition_keys) if entry.tasks else None
    spec = AssetSpec(
        key,
        description=_description(entry),
        metadata=metadata,
        group_name=entry.group_name,
        kinds={"kubernetes"},
        tags={vocabulary.TAG_NAMESPACE: ns},
        skippable=True,  # the op records no materialization: the Tasks do, when they have run
        partitions_def=partitions,
    )

    # multi_asset for the explicit op name: the name @asset derives from the key could clash
    # between Batches such as "a-b" and "a.b".
    @multi_asset(
        name=entry.op_name,
        specs=[spec],
        partitions_def=partitions,
        backfill_policy=BackfillPolicy.single_run() if partitions else None,
    )
    def _request_batchrun(context: AssetExecutionContext, kube: KubeResource):
        request_id = context.run.tags.get(BACKFILL_TAG) or context.run.run_id
        batchrun, created = create_batchrun(kube.api, ns, batch, request_id, context.run.run_id)
        meta = batchrun["metadata"]
        verb = "created" if created else "found"
        requested = context.partition_keys if context.has_partition_key_range or context.has_partition_key else []
        context.log.info(
            f"{verb} BatchRun {ns}/{meta['name']} (uid {meta['uid']}) for partitions {', '.join(requested) or '(all)'}; "
            "the bridge runs it as batch_job and each Task's outcome is recorded on its partition"
        )
        context.log_event(
            AssetObservation(
                key,
                metadata={
                    "batchrun": meta["name"],
                    "batchrun_uid": meta["uid"],
                    "namespace": ns,
                    "requested_partitions": MetadataValue.json(list(requested)),
                    "kubectl": MetadataValue.text(f"kubectl -n {ns} get batchrun {meta['name']}"),
                },
            )
        )
        # No output: the Tasks materialize their partitions when they complete.
        yield from ()

    return _request_batchrun


def batch_assets(entries: Iterable[BatchEntry]) -> list[AssetsDefinition]:
    return [batch_asset(e) for e in entries]
