"""crd_bridge: the controller between kubetask.io CRs and Dagster runs (``python -m crd_bridge``).

- ``config``: flags and environment variables;
- ``dagster_client``: the one adapter over Dagster's GraphQL API;
- ``tasks``: the Task reconcile logic (caches, work queue, decisions) behind a small Kubernetes interface;
- ``batchruns``: BatchRun submission, progress from Tasks, final state, pause, stop, rerun;
- ``batches``: Batch watch -> code-location reload, schedule on/off, Batch status and history limits;
- ``leader``: leader election on a Lease, so two replicas are safe;
- ``metrics``: Prometheus metrics, /healthz, /readyz;
- ``__main__``: kopf wiring, threads, start-up.
"""
