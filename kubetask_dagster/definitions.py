"""The `kubetask` Dagster code location.

``task_job`` and ``batch_job`` are static. The Batch assets and schedules come from the Batch CRs,
listed when the code location loads (``catalog``); the bridge reloads the location when a Batch
changes. The catalog travels with the definitions as reconstruction metadata: run workers and step
processes (which import this module again) rebuild the same definitions from it instead of listing
Batches once per run.
"""

from __future__ import annotations

import logging
import warnings

from dagster import Definitions, PreviewWarning

# Internal to Dagster ("meant for internal usage"), the mechanism its state-backed integrations use; dagster is pinned to 1.13.*.
from dagster._core.definitions.definitions_load_context import StateBackedDefinitionsLoader

from kubetask.domain import catalog as catalog_entries
from kubetask.domain.catalog import BatchEntry
from kubetask_dagster import catalog
from kubetask_dagster.assets import batch_assets
from kubetask_dagster.jobs import batch_job, pool_job, task_job
from kubetask_dagster.resources import RunStorageIOManager, kube_resource_from_env
from kubetask_dagster.schedules import batch_schedules

log = logging.getLogger(__name__)

RECONSTRUCTION_KEY = "kubetask/batch-catalog"


def build_definitions(entries: list[BatchEntry]) -> Definitions:
    """The code location for a given catalog (pure: no API calls)."""
    assets = []
    for entry in entries:
        try:
            assets.extend(batch_assets([entry]))
        except Exception as e:  # one odd Batch must not take the whole location down
            log.warning("Batch %s/%s: no asset (%s)", entry.namespace, entry.name, e)
    return Definitions(
        jobs=[task_job, batch_job, pool_job],
        assets=assets,
        schedules=batch_schedules(entries),
        resources={"kube": kube_resource_from_env(), "io_manager": RunStorageIOManager()},
    )


class BatchCatalogLoader(StateBackedDefinitionsLoader[str]):
    """Lists the Batches when the code location initialises; a reconstruction (run worker, step
    process) gets the same catalog back from Dagster instead of listing again."""

    @property
    def defs_key(self) -> str:
        return RECONSTRUCTION_KEY

    def fetch_state(self) -> str:
        return catalog_entries.dumps(catalog.load_entries())

    def defs_from_state(self, state: str) -> Definitions:
        return build_definitions(catalog_entries.loads(state))


def load_definitions() -> Definitions:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)  # with_reconstruction_metadata: pinned dagster 1.13.*
        return BatchCatalogLoader().build_defs()


defs = load_definitions()
