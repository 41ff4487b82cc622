"""Batch assets: keys, partitions, metadata, the BatchRun a materialization creates, and reconstruction."""

from __future__ import annotations

import pytest
from dagster import AssetKey, DagsterInstance, materialize
from dagster._core.definitions.definitions_load_context import DefinitionsLoadContext, DefinitionsLoadType
from dagster._core.definitions.reconstruct import repository_def_from_target_def
from test_schedules import FakeKube, batch

from kubetask import vocabulary
from kubetask.api.batch import MAX_BATCHRUN_NAME
from kubetask.domain import catalog as catalog_entries
from kubetask.domain.scheduling import materialization_batchrun_name
from kubetask_dagster import catalog, definitions
from kubetask_dagster.assets import batch_assets
from kubetask_dagster.ops.batch import batch_asset_key
from kubetask_dagster.resources import KubeResource


def entries(*objs):
    return catalog_entries.entries_from_batches(objs)


def test_one_asset_per_batch_with_a_partition_per_task():
    (asset,) = batch_assets(entries(batch("nightly", tasks=3, schedule={"cron": "@daily"}, workspaceConfigRef="ws")))
    key = AssetKey(["kubetask", "team-a", "batches", "nightly"])
    assert asset.key == key == batch_asset_key("team-a", "nightly")  # where batch_job's steps record each Task
    assert asset.partitions_def.get_partition_keys() == ["task-0", "task-1", "task-2"]
    assert asset.group_names_by_key[key] == "kubetask_team_a"
    spec = asset.specs_by_key[key]
    assert spec.metadata["namespace"] == "team-a" and spec.metadata["uid"] == "uid-1" and spec.metadata["tasks"] == 3
    assert "kubectl -n team-a get batch nightly" in spec.metadata["kubectl"].value
    assert spec.metadata["schedule"] == "batch__team_a__nightly" and spec.metadata["workspaceConfig"] == "ws"
    assert "team-a/nightly" in spec.description and "0 0 * * *" in spec.description
    assert asset.backfill_policy.max_partitions_per_run is None  # a backfill of all partitions is one run: one BatchRun
    assert asset.op.name == "request_batchrun__team_a__nightly"


def test_batches_whose_names_sanitise_alike_still_load():
    assets = batch_assets(entries(batch("a-b", uid="1"), batch("a.b", uid="2"), batch("empty", tasks=0)))
    assert len({a.op.name for a in assets}) == 3
    empty = next(a for a in assets if a.key.path[-1] == "empty")
    assert empty.partitions_def is None
    definitions.build_definitions(entries(batch("a-b", uid="1"), batch("a.b", uid="2"))).get_repository_def().get_all_jobs()


def test_materialization_batchrun_names():
    name = materialization_batchrun_name("nightly", "run-1")
    assert name.startswith("nightly-m") and len(name) == len("nightly-m") + 7
    assert name == materialization_batchrun_name("nightly", "run-1") != materialization_batchrun_name("nightly", "run-2")
    long = materialization_batchrun_name("x" * 100 + "-y", "r")
    assert len(long) == MAX_BATCHRUN_NAME and long.startswith("x" * 30)


@pytest.fixture
def fake_api(monkeypatch):
    api = FakeKube()
    api.custom.add("batches", batch("nightly", tasks=3))
    monkeypatch.setattr(KubeResource, "api", property(lambda self: api))
    return api


def test_materializing_creates_a_batchrun_for_the_bridge(fake_api, tmp_path):
    (asset,) = batch_assets(entries(batch("nightly", tasks=3)))
    with DagsterInstance.ephemeral(tempdir=str(tmp_path)) as instance:
        result = materialize([asset], partition_key="task-1", resources={"kube": KubeResource()}, instance=instance)
        assert result.success
        (created,) = [o for (plural, _, _), o in fake_api.custom.objs.items() if plural == "batchruns"]
        meta = created["metadata"]
        assert meta["name"] == materialization_batchrun_name("nightly", result.run_id)
        assert meta["ownerReferences"][0]["kind"] == "Batch" and meta["ownerReferences"][0]["uid"] == "uid-1"
        assert meta["labels"] == {vocabulary.LABEL_BATCH: "nightly"} and created["spec"] == {"batchRef": "nightly"}
        assert vocabulary.EXECUTED_BY not in meta["annotations"]  # the bridge submits batch_job for it
        assert meta["annotations"]["kubetask.io/requested-by"] == f"run/{result.run_id}"
        # The request is an observation; the Tasks materialize their partitions when they complete.
        assert result.get_asset_materialization_events() == []
        (obs,) = result.get_asset_observation_events()
        assert obs.asset_observation_data.asset_observation.metadata["batchrun"].value == meta["name"]
        assert instance.get_materialized_partitions(asset.key) == set()


def test_runs_of_one_backfill_share_one_batchrun(fake_api, tmp_path):
    (asset,) = batch_assets(entries(batch("nightly", tasks=3)))
    with DagsterInstance.ephemeral(tempdir=str(tmp_path)) as instance:
        for key in ("task-0", "task-2"):
            assert materialize([asset], partition_key=key, resources={"kube": KubeResource()}, instance=instance,
                               tags={"dagster/backfill": "bf1"}).success
    names = [n for (plural, _, n) in fake_api.custom.objs if plural == "batchruns"]
    assert names == [materialization_batchrun_name("nightly", "bf1")]


def test_materializing_a_deleted_batch_fails(fake_api, tmp_path):
    (asset,) = batch_assets(entries(batch("other")))
    with DagsterInstance.ephemeral(tempdir=str(tmp_path)) as instance:
        result = materialize([asset], partition_key="task-0", resources={"kube": KubeResource()}, instance=instance,
                             raise_on_error=False)
    assert not result.success


def test_run_workers_rebuild_from_the_saved_catalog(monkeypatch):
    """Initialisation lists Batches; reconstruction (run workers, step processes) reads the saved catalog."""
    listed = []

    def fake_load(env=None, custom_api=None):
        listed.append(1)
        return entries(batch("nightly", schedule={"cron": "* * * * *"}))

    monkeypatch.setattr(catalog, "load_entries", fake_load)
    with DefinitionsLoadContext.scoped(DefinitionsLoadContext(DefinitionsLoadType.INITIALIZATION)):
        repo = repository_def_from_target_def(definitions.load_definitions())  # what the code server does
    load_data = repo.repository_load_data  # travels with each run to its run worker and step processes
    assert listed == [1] and definitions.RECONSTRUCTION_KEY in load_data.reconstruction_metadata

    def refuse(env=None, custom_api=None):
        raise AssertionError("a run worker must not list Batches")

    monkeypatch.setattr(catalog, "load_entries", refuse)
    with DefinitionsLoadContext.scoped(DefinitionsLoadContext(DefinitionsLoadType.RECONSTRUCTION, load_data)):
        again = repository_def_from_target_def(definitions.load_definitions())
    assert {s.name for s in again.schedule_defs} == {"batch__team_a__nightly"}
    assert again.asset_graph.get_all_asset_keys() == repo.asset_graph.get_all_asset_keys()
