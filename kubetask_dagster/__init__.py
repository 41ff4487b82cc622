"""The ``kubetask`` Dagster code location (``kubetask_dagster.definitions``): jobs, ops, the threaded
executor and pools, resources, Batch assets and schedules, over the ``kubetask`` core. ``local/`` is the
local stack's only; no production module imports it."""
