"""The local stack only (``deploy/local/dagster.yaml``): the forking run launcher and SQLite tuning."""
