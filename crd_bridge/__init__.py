"""crd_bridge: the controller between kubetask.io CRs and Dagster runs (``python -m crd_bridge``).

It sits on the ``kubetask`` core and imports neither Dagster nor the code location: it talks to
Dagster over GraphQL only.

- ``config``: flags and environment variables;
- ``kube``: the one Kubernetes adapter (``KubeApi``, ``KubernetesApi``);
- ``dagster.client`` / ``dagster.queries``: the one Dagster adapter and every GraphQL document;
- ``cache``: ``ObjectStore`` (cache with indexes), ``WorkQueue``, ``WorkspaceLimits``;
- ``reconcile``: ``ReconcileLoop``, what the Task and BatchRun reconcilers share;
- ``tasks``: the Task decisions: submit, queue, stop, repair;
- ``batchruns``: the BatchRun decisions: submission, progress, final state, pause, stop, rerun;
- ``batches``: ``BatchSync``: code-location reload, schedule on/off, Batch status and history limits;
- ``leader``: leader election on a Lease, so two replicas are safe;
- ``metrics``: Prometheus metrics, /healthz, /readyz;
- ``runtime``: the parts wired together, with their threads; ``watch``: every kopf handler;
- ``__main__``: start-up.
"""
