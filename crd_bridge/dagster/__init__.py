"""The bridge's Dagster side: ``client`` (the one GraphQL adapter) and ``queries`` (every document)."""
