"""crd_bridge: the controller between kubetask.io Tasks and Dagster runs (``python -m crd_bridge``).

- ``config``: flags and environment variables;
- ``dagster_client``: the one adapter over Dagster's GraphQL API;
- ``tasks``: the Task reconcile logic (caches, work queue, decisions) behind a small Kubernetes interface;
- ``metrics``: Prometheus metrics, /healthz, /readyz;
- ``__main__``: kopf wiring, threads, start-up.
"""
